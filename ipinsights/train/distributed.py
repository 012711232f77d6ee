"""Data-parallel training on Spark executors: one interface, three backends.

* ``torch``: Spark's ``TorchDistributor`` (torch.distributed; gloo on CPU, NCCL on GPU).
* ``horovod``: ``horovod.spark.run`` (Horovod built with Gloo; see ``scripts/build_horovod.sh``).
* ``local``: one process in the driver, no Spark (debugging, and the 1-rank baseline).

Every backend runs the same per-rank function, :func:`train_worker`: top level and picklable, it
imports torch inside, receives only a plain :class:`WorkerSpec` (paths and dicts, never a
SparkSession or DataFrame) and reads its own shard of the prepared Parquet buckets itself.

Data and shuffling: the Spark side (``ipinsights.prepare``) writes the encoded training pairs as
``B = num_workers * buckets_per_worker`` buckets, each row in a uniformly random bucket. Every epoch
a seeded permutation deals the buckets out to the ranks, and each rank shuffles the rows it got.
A rank's shard is therefore a different random part of the whole data set every epoch.

Gradients: the encoder's dense gradients are averaged with one allreduce. The entity and IP tables
are row-sparse: ranks all-gather (row ids, row gradients) of the rows their step touched and apply
the same lazy-Adam update, so the tables stay identical on every rank and communication scales with
the rows touched, not with the table (20,000 x 128 entity rows alone would be 10 MB per step dense).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ipinsights.train.comm import COMMS

log = logging.getLogger(__name__)


#: Test hook: make rank 0 exit abruptly right after writing this epoch's checkpoint (a crash).
CRASH_ENV = "IPINSIGHTS_CRASH_AFTER_EPOCH"


@dataclass
class WorkerSpec:
    """Everything a rank needs, as plain picklable values."""

    hyperparameters: dict[str, Any]
    model_options: dict[str, Any]
    train_options: dict[str, Any]
    buckets: list[list[str]]  # bucket -> its Parquet files (URIs or paths)
    model_dir: str
    checkpoint_dir: str
    backend: str = "local"
    use_gpu: bool = False
    validation_files: list[str] = field(default_factory=list)
    entity_stats_file: str | None = None
    resume: bool = False
    warm_start: str | None = None
    checkpoint_keep: int = 2
    config: dict[str, Any] = field(default_factory=dict)


def _read_pairs(files: Sequence[str]):
    """Read (entity_row, ip) from Parquet files (local paths, file: URIs, or s3/s3a URIs)."""
    from ipinsights.storage.parquet import read_parquet_files
    from ipinsights.train.data import EncodedPairs

    if not files:  # a rank may be dealt no bucket in an epoch
        return EncodedPairs(np.zeros(0, np.int64), np.zeros(0, np.int64))
    t = read_parquet_files(files, ["entity_row", "ip"])
    return EncodedPairs(t["entity_row"].to_numpy().astype(np.int64), t["ip"].to_numpy().astype(np.int64))


def data_for_epoch(buckets: Sequence[Sequence[str]], rank: int, world_size: int, epoch: int, seed: int):
    """This rank's pairs for ``epoch``: a seeded deal of the buckets, then a seeded row shuffle.

    Every rank computes the same deal (same seed and epoch), so the ranks' shards never overlap and
    together cover the whole data set.
    """
    deal = np.random.default_rng([seed, epoch, 0xB0C]).permutation(len(buckets))
    mine = [f for b in deal[rank::world_size] for f in buckets[b]]
    pairs = _read_pairs(mine)
    order = np.random.default_rng([seed, epoch, rank]).permutation(len(pairs))
    return pairs.take(order)


def latest_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The ``latest.json`` record of a checkpoint directory, or None if it holds none."""
    p = Path(checkpoint_dir) / "latest.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


def _save_checkpoint(trainer, spec: WorkerSpec, history: list[dict[str, Any]]) -> None:
    import torch

    from ipinsights.storage.files import atomic_write
    from ipinsights.storage.modelfile import sha256_file

    d = Path(spec.checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{trainer.epoch:04d}.pt"
    with atomic_write(d / name, "wb") as fh:
        torch.save(trainer.state_dict(), fh)
    record = {"epoch": trainer.epoch, "file": name, "sha256": sha256_file(d / name), "history": history}
    with atomic_write(d / "latest.json") as fh:
        json.dump(record, fh, indent=2)
    for old in sorted(d.glob("epoch-*.pt"))[: -spec.checkpoint_keep]:
        old.unlink(missing_ok=True)


def _load_checkpoint(trainer, spec: WorkerSpec) -> list[dict[str, Any]]:
    import torch

    from ipinsights.storage.modelfile import sha256_file

    record = latest_checkpoint(spec.checkpoint_dir)
    if record is None:
        log.warning("--resume: no checkpoint in %s; starting from scratch", spec.checkpoint_dir)
        return []
    path = Path(spec.checkpoint_dir) / record["file"]
    if sha256_file(path) != record["sha256"]:
        raise RuntimeError(f"{path}: checksum mismatch; the checkpoint is corrupt")
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    trainer.load_state_dict(state)
    return list(record["history"])


def _warm_start(model, path: str) -> None:
    """Start from an earlier model: same hyperparameters of shape and same hash space required."""
    from ipinsights.storage.modelfile import load_model

    old = load_model(path)
    keys = ("num_entity_vectors", "vector_dim", "num_ip_encoder_layers")
    mine = {k: getattr(model.hp, k) for k in keys}
    theirs = {k: getattr(old.hyperparameters, k) for k in keys}
    if mine != theirs or old.options != model.opts:
        raise ValueError(
            f"--warm-start {path}: the model's shape or hash space differs "
            f"({theirs}, {old.options}) from this run's ({mine}, {model.opts})"
        )
    model.load_state_dict(old.model.state_dict())


def train_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Train on this rank; rank 0 writes checkpoints and the final model. Returns rank 0's summary."""
    import torch

    from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions, config_from_dict
    from ipinsights.storage.modelfile import save_model
    from ipinsights.train.trainer import Trainer, build_model

    hp = config_from_dict(Hyperparameters, spec.hyperparameters)
    mopts = config_from_dict(ModelOptions, spec.model_options)
    topts = config_from_dict(TrainOptions, spec.train_options)
    if spec.use_gpu:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        # Ranks share the executor's cores; one thread each avoids oversubscription (OpenMP spinning).
        torch.set_num_threads(topts.num_threads or 1)
    comm = COMMS[spec.backend](device)
    try:
        world = comm.world_size
        if hp.mini_batch_size % world:
            log.warning("mini_batch_size=%d is not a multiple of %d ranks", hp.mini_batch_size, world)
        model = build_model(hp, mopts, topts.seed, device)  # same seed: identical start on every rank
        if spec.warm_start:
            _warm_start(model, spec.warm_start)
        trainer = Trainer(model, hp, topts, comm=comm, batch_size=max(1, hp.mini_batch_size // world))
        history = _load_checkpoint(trainer, spec) if spec.resume else []
        validation = None
        if spec.validation_files and comm.rank == 0:
            validation = _read_pairs(spec.validation_files)

        def on_epoch_end(m) -> None:
            m.extra["comm_seconds"] = comm.stats.seconds
            m.extra["comm_bytes"] = float(comm.stats.bytes)
            history.append(m.as_dict())
            if comm.rank == 0:
                _save_checkpoint(trainer, spec, history)
                crash = os.environ.get(CRASH_ENV)
                if crash and int(crash) == trainer.epoch and not spec.resume:
                    log.error("%s=%s: simulating a crash after epoch %d", CRASH_ENV, crash, trainer.epoch)
                    os._exit(17)
            comm.barrier()

        def shard(epoch: int):
            return data_for_epoch(spec.buckets, comm.rank, world, epoch, topts.seed)

        trainer.fit(shard, validation, on_epoch_end=on_epoch_end)
        result: dict[str, Any] = {"history": history, "world_size": world, "rank": comm.rank}
        if comm.rank == 0:
            extra = {}
            if spec.entity_stats_file:
                from ipinsights.core.entities import ENTITY_FILE

                extra[ENTITY_FILE] = Path(spec.entity_stats_file).read_bytes()
            save_model(
                model,
                spec.model_dir,
                training={"epochs": history, "world_size": world, "backend": spec.backend},
                config=spec.config,
                extra_files=extra,
            )
        result["comm"] = {"calls": comm.stats.calls, "bytes": comm.stats.bytes, "seconds": comm.stats.seconds}
        return result
    finally:
        comm.close()


def _resolve_gpu(use_gpu: str) -> bool:
    if use_gpu == "true":
        return True
    if use_gpu == "false":
        return False
    import torch

    return torch.cuda.is_available()


def run_training(spark, spec: WorkerSpec, backend: str, num_workers: int, use_gpu: str = "auto") -> dict[str, Any]:
    """Run :func:`train_worker` on ``num_workers`` ranks with ``backend``; returns rank 0's summary."""
    spec.backend = backend
    spec.use_gpu = _resolve_gpu(use_gpu)
    if backend == "local" or (num_workers == 1 and backend != "horovod"):
        spec.backend = "local"
        return train_worker(spec)
    if backend == "torch":
        from pyspark.ml.torch.distributor import TorchDistributor

        distributor = TorchDistributor(num_processes=num_workers, local_mode=False, use_gpu=spec.use_gpu)
        return distributor.run(train_worker, spec)
    if backend == "horovod":
        try:
            import horovod.spark
        except ImportError as exc:
            raise RuntimeError("backend=horovod needs Horovod: run scripts/build_horovod.sh") from exc
        results = horovod.spark.run(train_worker, args=(spec,), num_proc=num_workers, use_gloo=True)
        return next(r for r in results if r["rank"] == 0)
    raise ValueError(f"unknown backend {backend!r}")
