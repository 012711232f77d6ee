"""Data-parallel training on Spark executors: one interface, three backends.

* ``torch``: Spark's ``TorchDistributor`` (torch.distributed; gloo on CPU, NCCL on GPU).
* ``horovod``: ``horovod.spark.run`` (Horovod built with Gloo; see ``scripts/build_horovod.sh``).
* ``local``: one process in the driver, no Spark (debugging, and the 1-rank baseline).

Every backend runs the same per-rank function, :func:`train_worker`: top level and picklable, it
receives only a plain :class:`WorkerSpec` (paths and dicts, never a
SparkSession or DataFrame) and reads its own shard of the prepared Parquet buckets itself.

Data and shuffling: the Spark side (``ipinsights.train.prepare``) writes the encoded training pairs as
``B = num_workers * buckets_per_worker`` buckets, each row in a uniformly random bucket. Every epoch
a seeded permutation deals the buckets out to the ranks, and each rank shuffles the rows it got.
A rank's shard is therefore a different random part of the whole data set every epoch.

Gradients: the encoder's dense gradients are averaged with one allreduce. The entity and IP tables
are row-sparse: ranks all-gather (row ids, row gradients) of the rows their step touched and apply
the same lazy-Adam update, so the tables stay identical on every rank and communication scales with
the rows touched, not with the table (20,000 x 128 entity rows alone would be 10 MB per step dense).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipinsights.storage.files import atomic_write
from ipinsights.storage.modelfile import sha256_file
from ipinsights.train.comm import COMMS
from ipinsights.train.data import EncodedPairs
from ipinsights.train.spec import RunSpec, read_pairs
from ipinsights.train.trainer import EpochMetrics, Trainer, train_model

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class WorkerSpec(RunSpec):
    """What a rank needs besides a :class:`RunSpec`: its buckets, checkpoints, backend and start point."""

    buckets: list[list[str]]  # bucket -> its Parquet files (URIs or paths)
    checkpoint_dir: str
    backend: str = "local"
    use_gpu: bool = False
    resume: bool = False
    warm_start: str | None = None
    checkpoint_keep: int = 2
    timeout_seconds: float = 300.0
    #: This job's run id. A retried Spark stage runs the same spec again: it finds its own run's
    #: checkpoint and resumes it, instead of starting over into the same folder.
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])


def data_for_epoch(
    buckets: Sequence[Sequence[str]], rank: int, world_size: int, epoch: int, seed: int, num_entity_vectors: int
) -> EncodedPairs:
    """This rank's pairs for ``epoch``: a seeded deal of the buckets, then a seeded row shuffle.

    Every rank computes the same deal (same seed and epoch), so the ranks' shards never overlap and
    together cover the whole data set.
    """
    deal = np.random.default_rng([seed, epoch, 0xB0C]).permutation(len(buckets))
    mine = [f for b in deal[rank::world_size] for f in buckets[b]]
    pairs = read_pairs(mine, num_entity_vectors)
    order = np.random.default_rng([seed, epoch, rank]).permutation(len(pairs))
    return pairs.take(order)


def latest_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The ``latest.json`` record of a checkpoint directory, or None if it holds none."""
    p = Path(checkpoint_dir) / "latest.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())


def _save_checkpoint(trainer: Trainer, spec: WorkerSpec, history: list[EpochMetrics], run_id: str) -> None:
    """Write this epoch's checkpoint, point ``latest.json`` at it, prune this run's older ones.

    Checkpoints belong to a run: files are named by run, and only files this run wrote (listed in
    ``latest.json`` while it is this run's) are pruned. An earlier run's files in the same folder, say
    ``epoch-0010`` of a longer run, are never touched, so they cannot make this run prune its own.
    """
    d = Path(spec.checkpoint_dir)
    d.mkdir(parents=True, exist_ok=True)
    previous = latest_checkpoint(d)
    mine = list(previous.get("files", [])) if previous and previous.get("run_id") == run_id else []
    name = f"epoch-{trainer.epoch:04d}-{run_id}.pt"
    with atomic_write(d / name, "wb") as fh:
        torch.save(trainer.state_dict(), fh)
    mine = [*(f for f in mine if f != name), name]
    keep = mine[-spec.checkpoint_keep :]
    record = {"epoch": trainer.epoch, "file": name, "sha256": sha256_file(d / name), "run_id": run_id,
              "files": keep, "history": [m.as_dict() for m in history]}  # fmt: skip
    with atomic_write(d / "latest.json") as fh:
        json.dump(record, fh, indent=2)
    for old in mine[: -spec.checkpoint_keep]:  # only after latest.json points past them
        (d / old).unlink(missing_ok=True)


def _load_checkpoint(trainer: Trainer, spec: WorkerSpec) -> list[EpochMetrics]:
    record = latest_checkpoint(spec.checkpoint_dir)
    if record is None:
        log.warning("--resume: no checkpoint in %s; starting from scratch", spec.checkpoint_dir)
        return []
    path = Path(spec.checkpoint_dir) / record["file"]
    if not path.exists():
        raise RuntimeError(f"--resume: {path}, the checkpoint latest.json points at, is missing")
    if sha256_file(path) != record["sha256"]:
        raise RuntimeError(f"{path}: checksum mismatch; the checkpoint is corrupt")
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    trainer.load_state_dict(state)
    log.info("resuming after epoch %d from %s", trainer.epoch, path)
    return [EpochMetrics.from_dict(h) for h in record["history"]]


def train_worker(spec: WorkerSpec) -> dict[str, Any]:
    """Train on this rank; rank 0 writes checkpoints and the final model. Returns rank 0's summary."""
    hp, mopts, topts = spec.options()
    if spec.use_gpu:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        topts = dataclasses.replace(topts, device=str(device))
    else:
        device = torch.device("cpu")
        # Ranks share the executor's cores; one thread each avoids oversubscription (OpenMP spinning).
        topts = dataclasses.replace(topts, device="cpu", num_threads=topts.num_threads or 1)
    comm = COMMS[spec.backend](device, spec.timeout_seconds)
    # The run that owns the checkpoints rank 0 writes: a resumed run continues the one it resumes,
    # and a retried attempt of this job (same spec, same run id) continues its own checkpoints.
    latest = latest_checkpoint(spec.checkpoint_dir) or {}
    retried = latest.get("run_id") == spec.run_id
    resume = spec.resume or retried
    if retried and not spec.resume:
        log.warning("run %s checkpointed epoch %s here already: this retried attempt resumes it",
                    spec.run_id, latest.get("epoch"))  # fmt: skip
    run_id = str((latest.get("run_id") if spec.resume else None) or spec.run_id)
    try:
        rank, world = comm.rank, comm.world_size
        validation = read_pairs(spec.validation_files, hp.num_entity_vectors) if rank == 0 else None

        def shard(epoch: int) -> EncodedPairs:
            return data_for_epoch(spec.buckets, rank, world, epoch, topts.seed, hp.num_entity_vectors)

        def checkpoint(trainer: Trainer, history: list[EpochMetrics]) -> None:
            if rank == 0:
                _save_checkpoint(trainer, spec, history, run_id)
            comm.barrier()  # no rank runs ahead of a checkpoint that may yet fail

        result = train_model(
            hp,
            mopts,
            topts,
            shard,
            validation,
            comm=comm,
            warm_start=spec.warm_start,
            restore=(lambda trainer: _load_checkpoint(trainer, spec)) if resume else None,
            on_epoch_end=checkpoint,
            model_dir=spec.model_dir,
            entity_stats=spec.entity_stats() if rank == 0 else None,
            config=spec.config,
            manifest={"world_size": world, "backend": spec.backend},
        )
        stats = comm.stats
        return {
            "history": [m.as_dict() for m in result.history],
            "world_size": world,
            "rank": rank,
            "comm": {"calls": stats.calls, "bytes": stats.bytes, "seconds": stats.seconds},
        }
    finally:
        comm.close()


def _resolve_gpu(use_gpu: str) -> bool:
    if use_gpu == "true":
        return True
    if use_gpu == "false":
        return False
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
        summary: dict[str, Any] | None = distributor.run(train_worker, spec)
        assert summary is not None  # run() returns None only for a script path; a function's result comes back
        return summary
    if backend == "horovod":
        try:
            import horovod.spark
        except ImportError as exc:
            raise RuntimeError("backend=horovod needs Horovod: run scripts/build_horovod.sh") from exc
        results = horovod.spark.run(train_worker, args=(spec,), num_proc=num_workers, use_gloo=True)
        return next(r for r in results if r["rank"] == 0)
    raise ValueError(f"unknown backend {backend!r}")
