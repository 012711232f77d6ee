"""Training speed on the SageMaker tutorial's shape, against a plain reference loop in the same process.

Shape: 2.2M pairs, 10k entities, R=5 (S=1, the default), mini_batch_size=1000, vector_dim=128,
learning_rate=0.01, one epoch. The reference is the same model trained the textbook way: the tables
as ``nn.Embedding`` with dense gradients and one ``torch.optim.Adam`` over all parameters. It is far
slower, so it is timed on ``--reference-batches`` batches and its epoch time extrapolated.

Prints one figure per line (``name=value``); compare ratios, not absolute times (machines are noisy).

    python bench/train_speed.py [--pairs 2200000] [--threads 0] [--reference-batches 40] [--asn-table FILES]
        [--validation-pairs 0]

``--validation-pairs N``: N more pairs of the same entities as validation data, scored after the epoch as
the training job does (``discriminator_auc``, ``shuffled_auc``): ``validation_seconds`` (outside
``epoch_seconds``, which times the training steps only).

``--asn-table``: ip2asn TSVs (``generated``: the generator's default plan, written to a temporary
folder) for a second epoch with AS and country levels (``model.asn_table``) in the same process:
``epoch_seconds_with_table`` and ``table_vs_plain_epoch_ratio`` (issue 19: within 1.15). The pairs'
address pools are then moved into the table's ranges (for both epochs), as a user's traffic is.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.train.data import EncodedPairs
from ipinsights.train.trainer import Trainer, build_model


def tutorial_pairs(n_pairs: int, n_entities: int = 10_000, seed: int = 0) -> EncodedPairs:
    """Pairs shaped like the tutorial's: each entity has a home and a work /20 pool plus some travel."""
    rng = np.random.default_rng(seed)
    pools = rng.integers(1 << 12, 224 << 12, (2, n_entities))
    ent = rng.integers(0, n_entities, n_pairs)
    u = rng.random(n_pairs)
    ips = (np.where(u < 0.6, pools[0][ent], pools[1][ent]) << 12) | rng.integers(1, 4095, n_pairs)
    ips = np.where(u > 0.97, rng.integers(1 << 24, 224 << 24, n_pairs), ips)
    rows = (ent * 2 + 1) % 20_000  # distinct rows, as hashing 10k entities into 20k buckets mostly gives
    return EncodedPairs(rows.astype(np.int64), ips.astype(np.int64))


def tutorial_hyperparameters() -> Hyperparameters:
    """The SageMaker tutorial's settings (R=5, batch 1000, dim 128, lr 0.01), one epoch."""
    return Hyperparameters(
        num_entity_vectors=20_000,
        vector_dim=128,
        epochs=1,
        learning_rate=0.01,
        mini_batch_size=1000,
        random_negative_sampling_rate=5,
        shuffled_negative_sampling_rate=1,
        batch_metrics_publish_interval=10**9,
    )


def reference_seconds_per_batch(hp: Hyperparameters, data: EncodedPairs, batches: int) -> float:
    """The textbook loop: nn.Embedding-style dense gradients and one dense torch.optim.Adam."""
    model = build_model(hp, ModelOptions(), seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=hp.learning_rate, weight_decay=hp.weight_decay)
    g = torch.Generator().manual_seed(0)
    B, R = hp.mini_batch_size, hp.random_negative_sampling_rate
    ent_all, ips_all = torch.as_tensor(data.entity_rows), torch.as_tensor(data.ips)
    times = []
    for step in range(batches + 2):
        t0 = time.perf_counter()
        ent, ips = ent_all[step * B : (step + 1) * B], ips_all[step * B : (step + 1) * B]
        rand = torch.randint(0, 2**32, (R * B,), generator=g)
        e = F.embedding(ent, model.entity_table)
        v = model.encode(F.embedding(model.ip_rows(torch.cat([ips, rand])), model.ip_table).sum(1))
        logits = torch.cat(
            [(e * v[:B]).sum(-1), (v[B:].view(R, B, -1) * e).sum(-1).flatten(), (e.roll(1, 0) * v[:B]).sum(-1)]
        )
        labels = torch.zeros_like(logits)
        labels[:B] = 1
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= 2:  # the first steps allocate optimiser state
            times.append(time.perf_counter() - t0)
    return float(np.mean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2_200_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--reference-batches", type=int, default=30)
    ap.add_argument("--validation-pairs", type=int, default=0, help="validation pairs scored after the epoch")
    ap.add_argument("--asn-table", default=None, help="ip2asn TSVs, or 'generated', for an epoch with the table")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hp = tutorial_hyperparameters()
    data = tutorial_pairs(args.pairs + args.validation_pairs)
    validation = data.take(slice(args.pairs, None)) if args.validation_pairs else None
    data = data.take(slice(0, args.pairs)) if args.validation_pairs else data
    table = None
    if args.asn_table:
        table = args.asn_table if args.asn_table != "generated" else _generated_tables()
        data = _inside(data, table)  # both epochs train on the same pairs, all of them in the table
    model = build_model(hp, ModelOptions(), seed=0)
    trainer = Trainer(model, hp, TrainOptions(progress_bar="off"))
    t0 = time.perf_counter()
    m = trainer.fit(data, validation, epochs=1)[0]
    fit_seconds = time.perf_counter() - t0
    ref = reference_seconds_per_batch(hp, data, args.reference_batches)
    n_batches = -(-args.pairs // hp.mini_batch_size)
    ref_epoch = ref * n_batches
    # OpenMP's wait policy moves the epoch by 1.6x on 2 idle cores (passive 59.6 s, spinning 37.0 s):
    # printed so that figures from shells that set it (scripts/test.sh, demo.sh) are not mistaken.
    print(f"# OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: spinning)')}")
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"pairs={args.pairs}")
    print(f"epoch_seconds={m.seconds:.2f}")
    print(f"pairs_per_second={m.pairs_per_second:.0f}")
    print(f"training_pairs_scored_per_second={m.pairs_per_second * 7:.0f}")  # 1 positive + R + S negatives each
    print(f"reference_epoch_seconds_extrapolated={ref_epoch:.2f}")
    print(f"reference_pairs_per_second={args.pairs / ref_epoch:.0f}")
    print(f"speedup_vs_reference={ref_epoch / m.seconds:.2f}")
    if validation is not None:
        print(f"validation_pairs={len(validation)}")
        print(f"validation_seconds={fit_seconds - m.seconds:.2f}")
        print(f"discriminator_auc={m.discriminator_auc:.4f}")
        print(f"shuffled_auc={m.extra['shuffled_auc']:.4f}")
    if table:
        model = build_model(hp, ModelOptions(asn_table=table), seed=0)
        keys = torch.as_tensor(data.ips[:100_000])
        known = (model.networks.rows(keys)[:, 0] != model.networks.unknown_asn).float().mean().item()
        t = Trainer(model, hp, TrainOptions(progress_bar="off")).fit(data, epochs=1)[0]
        print(f"addresses_in_table_share={known:.3f}")
        print(f"epoch_seconds_with_table={t.seconds:.2f}")
        print(f"table_vs_plain_epoch_ratio={t.seconds / m.seconds:.3f}")


def _inside(data: EncodedPairs, tables: str) -> EncodedPairs:
    """The pairs with every /20 pool moved into one range of the table (pool structure kept, ranges by pool)."""
    from ipinsights.storage.modelfile import network_table

    t = network_table(tables)
    v4 = np.flatnonzero(t.start < 1 << 32)
    pool = data.ips >> 12
    r = v4[pool % len(v4)]
    size = t.end[r] - t.start[r] + 1
    return EncodedPairs(data.entity_rows, t.start[r] + (data.ips - (pool << 12) + (pool << 12) % size) % size)


def _generated_tables() -> str:
    """The generator's default address plan as ip2asn-v4 and -v6 files in a temporary folder."""
    import tempfile
    from pathlib import Path

    from ipinsights.synth import SynthSpec
    from ipinsights.synth.world import load_plan

    folder = Path(tempfile.mkdtemp(prefix="train-speed-"))
    plan = load_plan(SynthSpec())
    return f"{plan.to_ip2asn_tsv(folder / 'v4.tsv')},{plan.to_ip2asn_v6_tsv(folder / 'v6.tsv')}"


if __name__ == "__main__":
    main()
