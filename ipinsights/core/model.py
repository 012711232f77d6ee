"""The IP Insights model: hashed entity embeddings, a prefix-structured IP encoder, dot-product score.

This module knows nothing of data loading, Spark, negative sampling or training loops (``ipinsights.train``):
it scores, and :meth:`IPInsightsModel.batch_vectors` is the forward pass of a row-sparse training step.

Shapes: ``n`` pairs, ``d = vector_dim``, ``L = len(ip_prefix_lengths)``.

* Entity: its string is hashed (``hashing.entity_buckets``, seeded, stable) to one of
  ``num_entity_vectors`` rows of ``entity_table`` ``(num_entity_vectors, d)``.
* IP address (an int64 key, :func:`ipinsights.core.ip.parse_ip`): for every prefix length ``p`` of its
  family (IPv4 ``ip_prefix_lengths``, default /8, /12, /16, /20, /24; IPv6 ``ipv6_prefix_lengths``,
  default /12, /32, /40, /48, /56, /64) the network ``ip >> (bits - p)`` selects a row of that
  level's block of ``ip_table``: short prefixes
  get an exact block (``2**p`` rows), long ones a seeded hash into ``ip_hash_buckets`` rows. The
  rows of all levels are summed ``(n, d)`` and passed through ``num_ip_encoder_layers`` fully
  connected layers. Two addresses share every level above the first prefix on which they differ, so
  an address never seen in training but inside networks an entity uses lands next to that entity's
  known addresses: this is how the encoder "exploits the prefix structure" of the address space.
  Deeper levels start at zero, so an untrained network adds nothing and defers to its parents.
* Networks (with ``ModelOptions.asn_table``): the address's AS (hashed into ``asn_hash_buckets``) and
  its country (exact) add two more rows to the sum, found in the ip2asn table by a binary search over
  its sorted range starts (:class:`_Networks`); addresses outside the table get the "unknown" rows.
  An ISP's prefixes are scattered over the address space, so no prefix level groups them: the AS row
  does. The table is not stored in the model (its fingerprint is): :meth:`IPInsightsModel.attach_networks`
  gives it to a built or loaded model, and a model that needs one refuses to encode without it.
* Score: ``dot_product = <entity_vector, ip_vector>``; higher means more compatible (normal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ipinsights.core.asn import AsnTable
from ipinsights.core.config import (
    COUNTRY_ROWS,
    IPV4_KEYS,
    Hyperparameters,
    ModelOptions,
    check_model_size,
    estimated_model_bytes,
    ip_level_sizes,
)
from ipinsights.core.errors import UsageError
from ipinsights.core.hashing import GOLDEN, GOLDEN_I64, MIX1, MIX1_I64

__all__ = [
    "BatchVectors",
    "IPInsightsModel",
    "NetworkRanges",
    "NetworkTableError",
    "TouchedRows",
    "estimated_model_bytes",
    "ip_level_sizes",
]


class _Levels(nn.Module):
    """Prefix levels of one address family: how an address key becomes its rows of ``ip_table``."""

    # The buffers registered in __init__, declared for the type checker (nn.Module resolves them).
    shifts: torch.Tensor
    masks: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    hashed: torch.Tensor
    ids: torch.Tensor

    def __init__(self, lengths: Sequence[int], bits: int, sizes: Sequence[int], first_row: int, first_level: int):
        super().__init__()
        self.n = len(lengths)
        shifts = [bits - p for p in lengths]
        # Masks make the shift logical for IPv6 keys (signed int64 top halves); -1 = keep all bits.
        masks = [(1 << p) - 1 if p < 64 else -1 for p in lengths]
        offsets = [first_row + sum(sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("shifts", torch.tensor(shifts, dtype=torch.int64), persistent=False)
        self.register_buffer("masks", torch.tensor(masks, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.tensor(list(sizes), dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64), persistent=False)
        hashed = [2**p > s for p, s in zip(lengths, sizes, strict=True)]
        self.register_buffer("hashed", torch.tensor(hashed), persistent=False)
        # Level numbers feed the hash, so that the same network id hashes differently per level/family.
        self.register_buffer("ids", torch.arange(first_level, first_level + self.n), persistent=False)

    def rows(self, keys: torch.Tensor, seed: int) -> torch.Tensor:
        """``(n,)`` int64 keys -> ``(n, L)`` rows of ``ip_table``."""
        net = (keys.unsqueeze(1) >> self.shifts) & self.masks  # (n, L) network ids
        mixed = (net ^ (self.ids * 0x1000193 + seed)) * GOLDEN_I64
        mixed = (mixed ^ (mixed >> 29)) * MIX1_I64
        hashed = torch.remainder(mixed ^ (mixed >> 32), self.sizes)
        return torch.where(self.hashed, hashed, net) + self.offsets


class NetworkTableError(UsageError):
    """A model trained with an ip2asn table is used without it, or with another one."""


class NetworkRanges(NamedTuple):
    """An attached ip2asn table's ranges as the model holds them (its own buffers: read them, never write).

    Sorted, non-overlapping ``[starts, ends]`` address-key ranges and each one's country slot (-1: unknown).
    """

    starts: torch.Tensor
    ends: torch.Tensor
    countries: torch.Tensor

    def find(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The range that may hold each key (clamped to a valid row), and whether it does."""
        i = torch.searchsorted(self.starts, keys, right=True) - 1
        j = i.clamp(min=0)
        return j, (i >= 0) & (keys <= self.ends[j])


class _Networks(nn.Module):
    """The AS and country levels: address keys -> their two rows of ``ip_table`` via an attached ip2asn table."""

    starts: torch.Tensor
    ends: torch.Tensor
    asn_rows: torch.Tensor
    country_rows: torch.Tensor
    countries: torch.Tensor

    def __init__(self, asn_buckets: int, first_row: int, seed: int) -> None:
        super().__init__()
        self.asn_buckets = asn_buckets
        self.unknown_asn = first_row + asn_buckets
        self.country_base = self.unknown_asn + 1
        self.unknown_country = self.country_base + COUNTRY_ROWS
        self.first_row = first_row
        self.seed = seed
        self.fingerprint: str | None = None
        for name in ("starts", "ends", "asn_rows", "country_rows", "countries"):  # not saved: the table lives outside
            self.register_buffer(name, torch.zeros(0, dtype=torch.int64), persistent=False)

    def attach(self, table: AsnTable) -> None:
        """Rows of each range of ``table``: its AS hashed (seeded, like the prefix levels), its country exact."""
        asn = np.asarray(table.asn, np.int64)
        with np.errstate(over="ignore"):
            h = (asn.astype(np.uint64) ^ np.uint64(self.seed)) * GOLDEN
            h ^= h >> np.uint64(31)
            h *= MIX1
            h ^= h >> np.uint64(29)
        asn_rows = self.first_row + (h % np.uint64(self.asn_buckets)).astype(np.int64)
        country = np.asarray(table.country, np.int64)
        country_rows = np.where(country >= 0, self.country_base + country, self.unknown_country)
        device = self.starts.device
        columns = {
            "starts": table.start,
            "ends": table.end,
            "asn_rows": asn_rows,
            "country_rows": country_rows,
            "countries": country,
        }
        for name, values in columns.items():
            setattr(self, name, torch.as_tensor(np.asarray(values, np.int64), device=device))
        self.fingerprint = table.fingerprint

    def ranges(self) -> NetworkRanges:
        """The attached table's ranges (empty before :meth:`attach`)."""
        return NetworkRanges(self.starts, self.ends, self.countries)

    def rows(self, keys: torch.Tensor) -> torch.Tensor:
        """``(n,)`` address keys -> ``(n, 2)`` rows: the AS's and the country's (unknown outside the table)."""
        if self.fingerprint is None:
            raise NetworkTableError(
                "this model was trained with an ip2asn table (model.asn_table) and cannot encode addresses "
                "without it: load it with the same table (asn_table)"
            )
        if not self.starts.numel():
            unknown = torch.tensor([self.unknown_asn, self.unknown_country], device=keys.device)
            return unknown.expand(keys.numel(), 2)
        j, inside = self.ranges().find(keys)
        asn = torch.where(inside, self.asn_rows[j], self.unknown_asn)
        country = torch.where(inside, self.country_rows[j], self.unknown_country)
        return torch.stack([asn, country], dim=1)


@dataclass(frozen=True)
class TouchedRows:
    """Rows ``ids`` of a table, copied out as the leaf tensor ``values`` a batch's vectors are computed from:
    after ``backward()``, ``values.grad`` holds the gradient of exactly these rows."""

    ids: torch.Tensor  # (u,) int64, sorted and unique
    values: torch.Tensor  # (u, d), requires grad


@dataclass(frozen=True)
class BatchVectors:
    """Entity and IP vectors of a training batch (:meth:`IPInsightsModel.batch_vectors`) and the table rows
    they were computed from."""

    entities: torch.Tensor  # (n, d), one per entity row asked for
    ips: torch.Tensor  # (m, d), one per address key asked for
    entity_rows: TouchedRows
    ip_rows: TouchedRows


class IPInsightsModel(nn.Module):
    """Entity embeddings + prefix-sum IP encoder; ``forward(entity_rows, ips)`` gives dot products.

    ``ips`` are int64 address keys (:func:`ipinsights.core.ip.parse_ip`): IPv4 values below ``2**32``,
    IPv6 top halves otherwise; each family has its own prefix levels (and blocks of ``ip_table``).
    """

    def __init__(self, hp: Hyperparameters, opts: ModelOptions, *, init_weights: bool = True) -> None:
        """``init_weights=False``: the two tables are placeholders on the ``meta`` device (no memory) for
        weights assigned afterwards (:func:`ipinsights.storage.modelfile.load_model`): allocating and
        initialising them first, then copying the saved weights in, would hold the weights twice at peak."""
        super().__init__()
        check_model_size(hp, opts)
        self.hp = hp
        self.opts = opts
        d = hp.vector_dim
        sizes = ip_level_sizes(opts)
        n4, n6 = len(opts.ip_prefix_lengths), len(opts.ipv6_prefix_lengths)
        tables = None if init_weights else torch.device("meta")
        self.entity_table = nn.Parameter(torch.empty(hp.num_entity_vectors, d, device=tables))
        self.ip_table = nn.Parameter(torch.empty(sum(sizes), d, device=tables))
        self.v4 = _Levels(opts.ip_prefix_lengths, 32, sizes[:n4], 0, 0)
        self.v6 = _Levels(opts.ipv6_prefix_lengths, 64, sizes[n4 : n4 + n6], sum(sizes[:n4]), n4)
        self.networks = (
            _Networks(opts.asn_hash_buckets, sum(sizes[: n4 + n6]), opts.hash_seed & 0x7FFFFFFF)
            if opts.asn_table
            else None
        )
        layers: list[nn.Module] = []
        for i in range(hp.num_ip_encoder_layers):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(d, d))
        self.encoder = nn.Sequential(*layers)
        if init_weights:
            self.reset_parameters()

    @property
    def supports_ipv6(self) -> bool:
        return self.v6.n > 0

    @property
    def network_fingerprint(self) -> str | None:
        """Fingerprint of the ip2asn table this model's AS and country levels need (None: it has none)."""
        return None if self.networks is None else self.networks.fingerprint

    @property
    def network_ranges(self) -> NetworkRanges | None:
        """The attached ip2asn table's ranges (None: no network levels), for samplers of announced addresses."""
        return None if self.networks is None else self.networks.ranges()

    def attach_networks(self, table: AsnTable, expected_fingerprint: str | None = None) -> None:
        """Give the model its ip2asn table; ``expected_fingerprint`` (the one a saved model was trained
        with) must match the table's. A model without network levels ignores the table."""
        if self.networks is None:
            return
        if expected_fingerprint is not None and table.fingerprint != expected_fingerprint:
            raise NetworkTableError(
                f"ip2asn table {table.source or '?'} (fingerprint {table.fingerprint[:12]}…) is not the one this "
                f"model was trained with (fingerprint {expected_fingerprint[:12]}…): a model's AS and country rows "
                "only mean something with its own table; score with that table or retrain"
            )
        self.networks.attach(table)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Entities ~ N(0, 1/d); each family's first (coarsest) IP level ~ N(0, 1/d), deeper levels zero."""
        d = self.hp.vector_dim
        std = 1.0 / math.sqrt(d)
        self.entity_table.normal_(0.0, std, generator=generator)
        self.ip_table.zero_()
        for fam in (self.v4, self.v6):
            if fam.n:
                start, rows = int(fam.offsets[0]), int(fam.sizes[0])
                self.ip_table[start : start + rows].normal_(0.0, std, generator=generator)
        for layer in self.encoder:
            if isinstance(layer, nn.Linear):
                # Near-identity start: the prefix sum already carries the signal; layers refine it.
                nn.init.eye_(layer.weight)
                layer.weight.add_(torch.randn(d, d, generator=generator) * (0.1 * std))
                layer.bias.zero_()

    # ---- IP side -------------------------------------------------------------------------------
    def ip_bags(self, ips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Rows of ``ip_table`` to sum for address keys ``(n,)``: ``(n, L)`` rows and per-row weights.

        When the families have different numbers of levels and a batch mixes them, the shorter bags
        are padded with their own first row at weight 0 (no gradient, no extra touched row);
        otherwise the weights are ``None`` (all ones, the fast path).
        """
        keys = ips.to(torch.int64)
        rows, weights = self._prefix_bags(keys)
        if self.networks is None:
            return rows, weights
        net = self.networks.rows(keys)
        # An address the table knows is its network: its prefix rows get weight 0 (no sum, no gradient). With
        # them in the sum, an entity's known /24s and /16s outweigh its AS, and a new prefix of its own ISP
        # (renumbering, a carrier's other pool) scores as foreign (bench/network_eval.py: AUC 0.92-0.96
        # against normal logins with the prefix rows kept, 0.53 without).
        # An address outside the table: its prefix rows and one shared "unknown network" row (the unknown
        # country row at weight 0: it would only ever be summed with the unknown AS row).
        known = (net[:, 0] != self.networks.unknown_asn).unsqueeze(1)
        base = torch.ones(rows.shape, dtype=self.ip_table.dtype, device=rows.device) if weights is None else weights
        weights = torch.cat([base.masked_fill(known, 0.0), torch.ones_like(base[:, :1]), known.to(base.dtype)], dim=1)
        return torch.cat([rows, net], dim=1), weights

    def _prefix_bags(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        seed = self.opts.hash_seed & 0x7FFFFFFF
        is6 = (keys < 0) | (keys >= IPV4_KEYS)
        n6 = int(is6.sum()) if self.v6.n else 0
        if n6 == 0:
            if self.v6.n == 0 and bool(is6.any()):
                raise ValueError("this model has no IPv6 levels (ipv6_prefix_lengths=()): IPv6 keys cannot be scored")
            return self.v4.rows(keys, seed), None
        if n6 == keys.numel():
            return self.v6.rows(keys, seed), None
        width = max(self.v4.n, self.v6.n)
        rows = torch.empty((keys.numel(), width), dtype=torch.int64, device=keys.device)
        weights = torch.ones((keys.numel(), width), dtype=self.ip_table.dtype, device=keys.device)
        for fam, sel in ((self.v4, ~is6), (self.v6, is6)):
            idx = sel.nonzero().squeeze(1)
            r = fam.rows(keys[idx], seed)
            if fam.n < width:
                r = torch.cat([r, r[:, :1].expand(-1, width - fam.n)], dim=1)
                weights[idx, fam.n :] = 0.0
            rows[idx] = r
        return rows, weights

    def ip_rows(self, ips: torch.Tensor) -> torch.Tensor:
        """Rows of ``ip_table`` for address keys ``(n,)`` -> ``(n, L)`` (see :meth:`ip_bags`)."""
        return self.ip_bags(ips)[0]

    def encode(self, prefix_sum: torch.Tensor) -> torch.Tensor:
        """The fully connected layers over the summed prefix embeddings ``(n, d) -> (n, d)``."""
        encoded: torch.Tensor = self.encoder(prefix_sum)  # nn.Module calls are untyped
        return encoded

    def packed_bags(self, ips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """:meth:`ip_bags` in the cheapest form for ``embedding_bag``: ``(rows, offsets, weights)``.

        With network levels, bags differ in length (2 rows for an address the table knows, its prefix
        rows plus 2 for one it does not): the rows with weight 0 are dropped and the rest packed flat
        with ``offsets``, so they are never gathered, summed or updated (``weights`` is then None).
        Without them, the 2D bags and weights of :meth:`ip_bags` (``offsets`` None).
        """
        rows, weights = self.ip_bags(ips)
        if self.networks is None or weights is None:
            return rows, None, weights
        keep = weights > 0
        counts = keep.sum(dim=1)
        return rows[keep], torch.cumsum(counts, 0) - counts, None

    def prefix_sums(self, ips: torch.Tensor) -> torch.Tensor:
        """Summed prefix-level rows ``(n, d)`` of address keys ``(n,)``: the encoder's input."""
        rows, offsets, weights = self.packed_bags(ips)
        # embedding_bag sums the L rows without materialising an (n, L, d) tensor: ~3x faster on CPU.
        return F.embedding_bag(rows, self.ip_table, offsets, mode="sum", per_sample_weights=weights)

    def ip_vectors(self, ips: torch.Tensor) -> torch.Tensor:
        """IP embeddings ``(n, d)`` for address keys given as int64 ``(n,)``."""
        return self.encode(self.prefix_sums(ips))

    # ---- entity side ---------------------------------------------------------------------------
    def entity_vectors(self, entity_rows: torch.Tensor) -> torch.Tensor:
        """Entity embeddings ``(n, d)`` for hashed entity rows ``(n,)``."""
        return self.entity_table[entity_rows]

    def forward(self, entity_rows: torch.Tensor, ips: torch.Tensor) -> torch.Tensor:
        """Dot products ``(n,)`` of entity and IP vectors."""
        return (self.entity_vectors(entity_rows) * self.ip_vectors(ips)).sum(dim=-1)

    # ---- training: vectors from the touched rows only --------------------------------------------
    def batch_vectors(self, entity_rows: torch.Tensor, ips: torch.Tensor) -> BatchVectors:
        """Entity vectors of ``entity_rows`` ``(n,)`` and IP vectors of address keys ``ips`` ``(m,)``, computed
        from leaf copies of only the table rows they touch (:class:`TouchedRows`).

        The same vectors as :meth:`entity_vectors` and :meth:`ip_vectors`, but ``backward()`` leaves
        gradients of (touched rows x d) instead of whole tables, which a row-sparse optimiser applies to
        those rows: a batch touches thousands of the tables' millions of rows.
        """
        uniq_e, inv_e = torch.unique(entity_rows, return_inverse=True)
        E = self.entity_table.detach().index_select(0, uniq_e).requires_grad_()
        bags, offsets, weights = self.packed_bags(ips)
        uniq_r, inv_r = torch.unique(bags, return_inverse=True)
        T = self.ip_table.detach().index_select(0, uniq_r).requires_grad_()
        summed = F.embedding_bag(inv_r, T, offsets, mode="sum", per_sample_weights=weights)
        return BatchVectors(E[inv_e], self.encode(summed), TouchedRows(uniq_e, E), TouchedRows(uniq_r, T))

    # ---- scoring: the last encoder layer folded into the entity side ---------------------------
    # <e, W h + b> = <W^T e, h> + <e, b>: the (n, d) x (d, d) product of the last layer moves from every
    # scored row to the entity table, once per model (the same dot product up to float rounding).
    def folded_entities(self, entity_rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(W^T e, <e, b>)`` of the last encoder layer for ``entity_rows`` (all rows when None).

        Without encoder layers: the entity vectors themselves and no bias.
        """
        e = self.entity_table if entity_rows is None else self.entity_table.index_select(0, entity_rows)
        if not len(self.encoder):
            return e, None
        last = self.encoder[-1]
        assert isinstance(last, nn.Linear)  # __init__ builds the encoder to end with a Linear layer
        return e @ last.weight, e @ last.bias

    def folded_forward(self, folded: torch.Tensor, bias: torch.Tensor | None, ips: torch.Tensor) -> torch.Tensor:
        """Dot products ``(n,)`` from folded entity rows ``(n, d)`` (:meth:`folded_entities`) and address keys."""
        h = self.prefix_sums(ips)
        for layer in list(self.encoder)[:-1]:
            h = layer(h)
        dp: torch.Tensor = torch.linalg.vecdot(folded, h)  # untyped in torch's stubs
        return dp if bias is None else dp + bias

    def sparse_parameter_names(self) -> Sequence[str]:
        """Tables updated row by row (their gradients are only ever the rows a batch touched)."""
        return ("entity_table", "ip_table")
