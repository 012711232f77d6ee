"""The IP Insights model: hashed entity embeddings, a prefix-structured IP encoder, dot-product score.

This module knows nothing of data loading, Spark or training loops (see ``trainer.py``).

Shapes: ``n`` pairs, ``d = vector_dim``, ``L = len(ip_prefix_lengths)``.

* Entity: its string is hashed (``hashing.entity_buckets``, seeded, stable) to one of
  ``num_entity_vectors`` rows of ``entity_table`` ``(num_entity_vectors, d)``.
* IP address: for every prefix length ``p`` in ``ip_prefix_lengths`` (default /8, /12, /16, /20, /24)
  the network ``ip >> (32 - p)`` selects a row of that level's block of ``ip_table``: short prefixes
  get an exact block (``2**p`` rows), long ones a seeded hash into ``ip_hash_buckets`` rows. The
  rows of all levels are summed ``(n, d)`` and passed through ``num_ip_encoder_layers`` fully
  connected layers. Two addresses share every level above the first prefix on which they differ, so
  an address never seen in training but inside networks an entity uses lands next to that entity's
  known addresses: this is how the encoder "exploits the prefix structure" of the address space.
  Deeper levels start at zero, so an untrained network adds nothing and defers to its parents.
* Score: ``dot_product = <entity_vector, ip_vector>``; higher means more compatible (normal).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ipinsights.config import MAX_MODEL_BYTES, ConfigError, Hyperparameters, ModelOptions

__all__ = ["IPInsightsModel", "ip_level_sizes", "estimated_model_bytes"]

_MIX = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer (torch has no uint64 math)
_MIX2 = -4658895280553007687  # 0xBF58476D1CE4E5B9 likewise


def ip_level_sizes(opts: ModelOptions) -> list[int]:
    """Rows of ``ip_table`` per prefix level: exact when it fits in ``ip_hash_buckets``, else hashed."""
    return [min(2**p, opts.ip_hash_buckets) for p in opts.ip_prefix_lengths]


def estimated_model_bytes(hp: Hyperparameters, opts: ModelOptions) -> int:
    """Size of the float32 weights (what a model file holds)."""
    rows = hp.num_entity_vectors + sum(ip_level_sizes(opts))
    dense = hp.num_ip_encoder_layers * (hp.vector_dim * hp.vector_dim + hp.vector_dim)
    return 4 * (rows * hp.vector_dim + dense)


class IPInsightsModel(nn.Module):
    """Entity embeddings + prefix-sum IP encoder; ``forward(entity_rows, ips)`` gives dot products."""

    def __init__(self, hp: Hyperparameters, opts: ModelOptions) -> None:
        super().__init__()
        size = estimated_model_bytes(hp, opts)
        if size > MAX_MODEL_BYTES:
            raise ConfigError(
                f"model of {size / 1024**3:.1f} GiB exceeds the {MAX_MODEL_BYTES / 1024**3:.0f} GiB limit: "
                f"lower num_entity_vectors={hp.num_entity_vectors}, vector_dim={hp.vector_dim} or ip_hash_buckets"
            )
        self.hp = hp
        self.opts = opts
        d = hp.vector_dim
        sizes = ip_level_sizes(opts)
        self.entity_table = nn.Parameter(torch.empty(hp.num_entity_vectors, d))
        self.ip_table = nn.Parameter(torch.empty(sum(sizes), d))
        offsets = torch.tensor([0, *sizes[:-1]], dtype=torch.int64).cumsum(0)
        self.register_buffer("level_offsets", offsets, persistent=False)
        self.register_buffer("level_shifts", torch.tensor([32 - p for p in opts.ip_prefix_lengths]), persistent=False)
        self.register_buffer("level_sizes", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        hashed = [2**p > s for p, s in zip(opts.ip_prefix_lengths, sizes, strict=True)]
        self.register_buffer("level_hashed", torch.tensor(hashed), persistent=False)
        layers: list[nn.Module] = []
        for i in range(hp.num_ip_encoder_layers):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(d, d))
        self.encoder = nn.Sequential(*layers)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Entities ~ N(0, 1/d); the first (coarsest) IP level ~ N(0, 1/d), deeper levels zero."""
        d = self.hp.vector_dim
        std = 1.0 / math.sqrt(d)
        self.entity_table.normal_(0.0, std, generator=generator)
        self.ip_table.zero_()
        first = int(self.level_sizes[0])
        self.ip_table[:first].normal_(0.0, std, generator=generator)
        for layer in self.encoder:
            if isinstance(layer, nn.Linear):
                # Near-identity start: the prefix sum already carries the signal; layers refine it.
                nn.init.eye_(layer.weight)
                layer.weight.add_(torch.randn(d, d, generator=generator) * (0.1 * std))
                layer.bias.zero_()

    # ---- IP side -------------------------------------------------------------------------------
    def ip_rows(self, ips: torch.Tensor) -> torch.Tensor:
        """Rows of ``ip_table`` for IPv4 addresses ``(n,)`` int64 -> ``(n, L)`` int64."""
        net = ips.to(torch.int64).unsqueeze(1) >> self.level_shifts  # (n, L) network ids
        seed = self.opts.hash_seed & 0x7FFFFFFF
        level = torch.arange(net.shape[1], device=net.device)
        mixed = (net ^ (level * 0x1000193 + seed)) * _MIX
        mixed = (mixed ^ (mixed >> 29)) * _MIX2
        hashed = torch.remainder(mixed ^ (mixed >> 32), self.level_sizes)
        return torch.where(self.level_hashed, hashed, net) + self.level_offsets

    def encode(self, prefix_sum: torch.Tensor) -> torch.Tensor:
        """The fully connected layers over the summed prefix embeddings ``(n, d) -> (n, d)``."""
        return self.encoder(prefix_sum)

    def ip_vectors(self, ips: torch.Tensor) -> torch.Tensor:
        """IP embeddings ``(n, d)`` for IPv4 addresses given as int64 ``(n,)``."""
        rows = self.ip_rows(ips)
        # embedding_bag sums the L rows without materialising an (n, L, d) tensor: ~3x faster on CPU.
        return self.encode(F.embedding_bag(rows, self.ip_table, mode="sum"))

    # ---- entity side ---------------------------------------------------------------------------
    def entity_vectors(self, entity_rows: torch.Tensor) -> torch.Tensor:
        """Entity embeddings ``(n, d)`` for hashed entity rows ``(n,)``."""
        return self.entity_table[entity_rows]

    def forward(self, entity_rows: torch.Tensor, ips: torch.Tensor) -> torch.Tensor:
        """Dot products ``(n,)`` of entity and IP vectors."""
        return (self.entity_vectors(entity_rows) * self.ip_vectors(ips)).sum(dim=-1)

    def sparse_parameter_names(self) -> Sequence[str]:
        """Tables updated row by row (their gradients are only ever the rows a batch touched)."""
        return ("entity_table", "ip_table")
