"""Negative sampling: what a training batch's real pairs are contrasted with (no Spark).

* Random addresses (:func:`random_ips_like`): uniform in the positive's address family, SageMaker's
  random negatives, R per positive.
* Announced addresses (:class:`TableNegatives`): with an ip2asn table (``model.asn_table``), a share
  ``train.table_negatives`` of the random ones come from the announced ranges of the positive's own
  country instead.
* Shuffled negatives: the batch's own addresses re-paired with other entities of the batch (S rolls).

:class:`NegativeSampler` draws all of them for a batch from one generator; :mod:`ipinsights.train.task`
pairs them with entities and scores them. The model only lends its table's ranges
(:attr:`ipinsights.core.model.IPInsightsModel.network_ranges`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ipinsights.core.config import COUNTRY_ROWS, IPV4_KEYS, TrainOptions
from ipinsights.core.model import NetworkRanges

__all__ = ["NegativeSampler", "Negatives", "TableNegatives", "random_ips_like"]

_V6_UNICAST = 1 << 61  # 2000::/3, global unicast: its top halves are [2**61, 2**62)


def random_ips_like(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One uniformly random address key per key of ``like``, of the same family.

    IPv4: a uniform 32-bit value (each octet uniform, SageMaker's random negatives); IPv6: a uniform
    top half inside global unicast 2000::/3 (anything else never reaches a web server). Matching the
    family keeps "is it IPv6" from being a shortcut the model could learn instead of networks.
    """
    device = like.device
    r4 = torch.randint(0, 2**32, like.shape, generator=generator, dtype=torch.int64, device=device)
    is6 = (like < 0) | (like >= IPV4_KEYS)
    if not bool(is6.any()):  # pure IPv4 data draws exactly what it always did
        return r4
    r6 = torch.randint(0, _V6_UNICAST, like.shape, generator=generator, dtype=torch.int64, device=device)
    return torch.where(is6, r6 + _V6_UNICAST, r4)


class TableNegatives:
    """Announced addresses of an ip2asn table, in the same family and country as given addresses."""

    def __init__(self) -> None:
        # Ranges ordered by (family, country) and each such key's first and end position in that order, and
        # the table's starts they were built from: sorting the table once per batch would cost more than the draw.
        self._segments: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._built_for: torch.Tensor | None = None

    def keys_like(self, ranges: NetworkRanges, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A random announced address per key of ``like``, in the same family and country as that address
        (IPv6: a random /64 of the range), or ``like`` itself where the table has no range of the family.
        An address outside the table counts as of unknown country; where the family has no range of the
        address's country, any of its ranges.

        The range is drawn uniformly among the country's ranges, not by size: negatives from real
        networks of the same country teach "not this entity's ISP" (with uniform random addresses only,
        the country row alone separates most negatives, and another ISP of the entity's own country looks
        normal), and drawn by size they would hardly ever reach a small ISP, whose row then stays
        untrained and neutral, so that a login from it looked unremarkable.
        """
        order, first, last = self._segments_of(ranges)
        if not order.numel():
            return like
        is6 = ((like < 0) | (like >= IPV4_KEYS)).long()
        j, inside = ranges.find(like)
        width = COUNTRY_ROWS + 1
        seg = is6 * width + torch.where(inside, ranges.countries[j], -1) + 1
        lo, hi = first[seg], last[seg]
        empty = lo == hi
        lo = torch.where(empty, first[is6 * width], lo)
        hi = torch.where(empty, last[is6 * width + COUNTRY_ROWS], hi)
        u = torch.rand((2, *like.shape), generator=generator, dtype=torch.float64, device=like.device)
        pick = (lo + (u[0] * (hi - lo)).long()).clamp(max=order.numel() - 1)
        r = order[pick]
        size = (ranges.ends[r] - ranges.starts[r] + 1).to(torch.float64)
        address = ranges.starts[r] + (u[1] * size).long().clamp(min=0)
        return torch.where(hi > lo, torch.minimum(address, ranges.ends[r]), like)

    def _segments_of(self, ranges: NetworkRanges) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Ranges ordered by (family, country), and each (family, country) key's first and end position in
        that order (rebuilt when another table, or the table on another device, comes)."""
        if self._segments is None or self._built_for is not ranges.starts:
            width = COUNTRY_ROWS + 1
            key = (ranges.starts >= IPV4_KEYS).long() * width + ranges.countries + 1
            key_sorted, order = torch.sort(key, stable=True)
            keys = torch.arange(2 * width, device=key.device)
            first = torch.searchsorted(key_sorted, keys)
            self._segments = (order, first, torch.searchsorted(key_sorted, keys, right=True))
            self._built_for = ranges.starts
        return self._segments


@dataclass(frozen=True)
class Negatives:
    """The negatives of a batch of ``B`` positives (:meth:`NegativeSampler.draw`)."""

    #: Random address keys: ``B`` (each paired with ``rolls`` entities) when ``shared``, else ``rolls * B``
    #: (roll-major: the ``i``-th block of ``B`` pairs with the batch's entities in order); None when R = 0.
    addresses: torch.Tensor | None
    rolls: int
    shared: bool
    #: Rolls (each in ``[1, B)``) of the batch's entities that re-pair its own addresses (shuffled negatives).
    shuffle_shifts: list[int]


class NegativeSampler:
    """Draws each batch's negatives: R random addresses per positive, S shuffled re-pairings.

    With ``share_random_ips`` (and ``B > R``: R distinct rolls need R < B) one random address per
    positive is paired with R entities of the batch instead of R addresses with one entity each: the same
    number of random-negative pairs with the same distribution, for 1/R of the encoder work.
    """

    def __init__(
        self, random_rate: int, shuffled_rate: int, options: TrainOptions, device: torch.device, rank: int = 0
    ) -> None:
        self.random_rate = random_rate
        self.shuffled_rate = shuffled_rate
        self.options = options
        self.rank = rank
        self.generator = torch.Generator(device=device)
        self.table = TableNegatives()
        self.reseed(0)

    def reseed(self, epoch: int) -> None:
        """Seed the generator from (seed, epoch, rank): negatives differ per rank and per epoch.

        Derived afresh every epoch rather than carried in checkpoints: rank 0 writes the checkpoint, so
        a restored sampler state would make every rank draw rank 0's negatives after a resume.
        """
        seed = np.random.SeedSequence([self.options.seed, epoch, self.rank]).generate_state(1, np.uint64)[0]
        self.generator.manual_seed(int(seed))

    def draw(self, ips: torch.Tensor, ranges: NetworkRanges | None) -> Negatives:
        """The negatives of a batch of address keys ``ips`` (on the generator's device); ``ranges``: the model's
        ip2asn table, the source of announced addresses (None: random addresses only)."""
        B, R = ips.numel(), self.random_rate
        S = self.shuffled_rate if B > 1 else 0  # nothing to re-pair with in a batch of 1
        share = self.options.share_random_ips and B > R
        device = self.generator.device
        addresses = None
        if R:
            # One family-matched draw per positive (R per positive unshared): negatives mix families as the data does.
            like = ips if share else ips.repeat(R)
            addresses = random_ips_like(like, self.generator)
            if ranges is not None and self.options.table_negatives > 0:
                from_table = torch.rand(addresses.shape, generator=self.generator, device=device)
                from_table = from_table < self.options.table_negatives
                addresses = torch.where(from_table, self.table.keys_like(ranges, like, self.generator), addresses)
        shifts = torch.randint(1, B, (S,), generator=self.generator, device=device).tolist() if S else []
        return Negatives(addresses, R, share, shifts)
