"""Data-parallel training on Spark executors: one interface, three backends.

* ``torch``: Spark's ``TorchDistributor`` (torch.distributed; gloo on CPU, NCCL on GPU).
* ``horovod``: ``horovod.spark.run`` (Horovod built with Gloo; see ``scripts/build_horovod.sh``).
* ``local``: one process in the driver, no Spark, with all the driver's cores.
* ``auto`` (the default): ``local`` on a ``local[N]`` master (one process with N threads trains faster
  than N single-threaded ranks exchanging gradients), ``torch`` with one rank per executor (or GPU) on
  a cluster; :func:`resolve_distributed` decides and logs why.

Rank 0 of ``torch`` and ``horovod`` runs elsewhere; the driver logs its progress lines as they come
(:mod:`ipinsights.train.progress`).

Every backend runs the same per-rank function, :func:`train_worker`: top level and picklable, it
receives only a plain :class:`WorkerSpec` (paths and dicts, never a
SparkSession or DataFrame) and reads its own shard of the prepared Parquet buckets itself.

Data and shuffling: the Spark side (``ipinsights.train.prepare``) writes the encoded training pairs as
``B = num_workers * buckets_per_worker`` buckets, each row in a uniformly random bucket. Every epoch
a seeded permutation deals the buckets out to the ranks, and each rank streams the rows it got through
a seeded shuffle buffer (:mod:`ipinsights.train.stream`: its memory does not grow with the data).
A rank's shard is therefore a different random part of the whole data set every epoch.

Gradients: the encoder's dense gradients are averaged with one allreduce. The entity and IP tables
are row-sparse: ranks all-gather (row ids, row gradients) of the rows their step touched and apply
the same lazy-Adam update, so the tables stay identical on every rank and communication scales with
the rows touched, not with the table (20,000 x 128 entity rows alone would be 10 MB per step dense).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ipinsights.core.config import DistributedOptions
from ipinsights.storage.files import atomic_leftovers, delete_uri, join_uri, read_bytes, write_bytes, write_json
from ipinsights.storage.lease import LeaseRef
from ipinsights.train.comm import COMMS
from ipinsights.train.progress import ProgressTail, ProgressWriter
from ipinsights.train.spec import RunSpec, read_pairs
from ipinsights.train.stream import ShardStream
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
    progress_dir: str | None = None  # where rank 0 writes its progress lines for the driver (None: log only)
    #: The run's lease on its output: rank 0 renews it before each checkpoint and the model (the fence).
    fence: LeaseRef | None = None


def data_for_epoch(
    buckets: Sequence[Sequence[str]],
    rank: int,
    world_size: int,
    epoch: int,
    seed: int,
    num_entity_vectors: int,
    buffer_rows: int,
) -> ShardStream:
    """This rank's pairs for ``epoch``: a seeded deal of the buckets, streamed through a seeded shuffle buffer.

    Every rank computes the same deal (same seed and epoch), so the ranks' shards never overlap and
    together cover the whole data set. Nothing but the files' footers is read until training asks.
    """
    deal = np.random.default_rng([seed, epoch, 0xB0C]).permutation(len(buckets))
    mine = [f for b in deal[rank::world_size] for f in buckets[b]]
    return ShardStream(mine, num_entity_vectors, buffer_rows, seed=[seed, epoch, rank])


def latest_checkpoint(checkpoint_dir: str | Path) -> dict[str, Any] | None:
    """The ``latest.json`` record of a checkpoint directory (a path or URI), or None if it holds none."""
    try:
        record: dict[str, Any] = json.loads(read_bytes(join_uri(checkpoint_dir, "latest.json")))
    except FileNotFoundError:
        return None
    return record


def _save_checkpoint(trainer: Trainer, spec: WorkerSpec, history: list[EpochMetrics], run_id: str) -> None:
    """Write this epoch's checkpoint, point ``latest.json`` at it, prune this run's older ones.

    Checkpoints belong to a run: files are named by run, and only files this run wrote (listed in
    ``latest.json`` while it is this run's) are pruned. An earlier run's files in the same folder, say
    ``epoch-0010`` of a longer run, are never touched, so they cannot make this run prune its own.
    The folder may be a URI (shared storage, so that every rank of a resumed run finds it): the
    checkpoint is written whole first, ``latest.json`` (one atomic write) after it.
    """
    d = spec.checkpoint_dir
    for leftover in atomic_leftovers(d):  # half-written files of a killed earlier attempt: never valid
        leftover.unlink(missing_ok=True)
    previous = latest_checkpoint(d)
    mine = list(previous.get("files", [])) if previous and previous.get("run_id") == run_id else []
    name = f"epoch-{trainer.epoch:04d}-{run_id}.pt"
    buf = io.BytesIO()  # the size of the model and optimizer state, which the trainer holds anyway
    torch.save(trainer.state_dict(), buf)
    data = buf.getvalue()
    write_bytes(join_uri(d, name), data)
    mine = [*(f for f in mine if f != name), name]
    keep = mine[-spec.checkpoint_keep :]
    record = {
        "epoch": trainer.epoch,
        "file": name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "run_id": run_id,
        "files": keep,
        "history": [m.as_dict() for m in history],
    }
    write_json(join_uri(d, "latest.json"), record)
    for old in mine[: -spec.checkpoint_keep]:  # only after latest.json points past them
        delete_uri(join_uri(d, old))


def _load_checkpoint(trainer: Trainer, spec: WorkerSpec) -> list[EpochMetrics]:
    """Load the checkpoint ``latest.json`` names (every rank reads it from the shared folder)."""
    record = latest_checkpoint(spec.checkpoint_dir)
    if record is None:
        log.warning("--resume: no checkpoint in %s; starting from scratch", spec.checkpoint_dir)
        return []
    path = join_uri(spec.checkpoint_dir, record["file"])
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise RuntimeError(f"--resume: {path}, the checkpoint latest.json points at, is missing") from None
    if hashlib.sha256(data).hexdigest() != record["sha256"]:
        raise RuntimeError(f"{path}: checksum mismatch; the checkpoint is corrupt")
    state = torch.load(io.BytesIO(data), map_location=trainer.device, weights_only=True)
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
        log.warning(
            "run %s checkpointed epoch %s here already: this retried attempt resumes it",
            spec.run_id,
            latest.get("epoch"),
        )
    run_id = str((latest.get("run_id") if spec.resume else None) or spec.run_id)
    try:
        rank, world = comm.rank, comm.world_size
        validation = read_pairs(spec.validation_files, hp.num_entity_vectors) if rank == 0 else None

        def shard(epoch: int) -> ShardStream:
            return data_for_epoch(
                spec.buckets, rank, world, epoch, topts.seed, hp.num_entity_vectors, topts.shuffle_buffer_rows
            )

        def checkpoint(trainer: Trainer, history: list[EpochMetrics]) -> None:
            if rank == 0:
                if spec.fence is not None:
                    spec.fence()
                _save_checkpoint(trainer, spec, history, run_id)
            comm.barrier()  # no rank runs ahead of a checkpoint that may yet fail

        progress = ProgressWriter(spec.progress_dir).write if rank == 0 and spec.progress_dir else None
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
            progress=progress,
            model_dir=spec.model_dir,
            fence=spec.fence,
            entity_stats=spec.entity_stats_file if rank == 0 else None,
            config=spec.config,
            manifest={**spec.record, "world_size": world, "backend": spec.backend},
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


#: ``local``, ``local[4]``, ``local[*]``, ``local[4,2]`` (with task retries): Spark in this one process.
_LOCAL_MASTER = re.compile(r"local(?:\[(\*|\d+)(?:,\s*\d+)?\])?")


def local_master_cores(master: str) -> int | None:
    """The cores of a ``local[N]`` Spark master (``local`` is 1, ``local[*]`` all); None for a cluster.

    ``local-cluster[...]`` is a cluster (separate executor processes), as are ``spark://``, ``yarn``
    and ``k8s://`` masters.
    """
    m = _LOCAL_MASTER.fullmatch(master.strip())
    if m is None:
        return None
    if m.group(1) is None:
        return 1
    return (os.cpu_count() or 1) if m.group(1) == "*" else int(m.group(1))


def _conf_int(spark, key: str) -> int:
    value = spark.sparkContext.getConf().get(key, "0") or "0"
    try:
        return int(float(value))
    except ValueError:
        return 0


def _cluster_ranks(spark, use_gpu: str) -> tuple[int, str]:
    """One rank per executor, or per GPU where executors have them; with the reason, for the log."""
    executors = _conf_int(spark, "spark.executor.instances")
    how = "spark.executor.instances"
    if executors <= 0:  # dynamic allocation: the executors there now (the driver is listed too)
        executors = max(len(spark.sparkContext._jsc.sc().statusTracker().getExecutorInfos()) - 1, 1)
        how = "executors registered now; set distributed.num_workers for more"
    gpus = _conf_int(spark, "spark.executor.resource.gpu.amount")
    if gpus > 0 and use_gpu != "false":
        return executors * gpus, f"{executors} executors ({how}) x {gpus} GPUs"
    return executors, f"{executors} executors ({how})"


def resolve_distributed(spark, dist: DistributedOptions) -> DistributedOptions:
    """``dist`` with a concrete backend and rank count for this Spark master, the choice logged.

    ``auto``: ``local`` on a ``local[N]`` master, else ``torch``. ``num_workers=0``: one rank per core
    of a local master, per executor (or GPU) of a cluster; the ``local`` backend is always one rank.
    """
    master = spark.sparkContext.master
    cores = local_master_cores(master)
    backend, why = dist.backend, f"distributed.backend={dist.backend}"
    if backend == "auto":
        backend = "local" if cores is not None else "torch"
        why = (
            f"backend=auto chose local: the Spark master {master} is this machine, where one process "
            f"with {cores} threads trains faster than {cores} ranks exchanging gradients"
            if cores is not None
            else f"backend=auto chose torch: the Spark master {master} is a cluster"
        )
    workers = dist.num_workers
    if backend == "local":
        workers = 1
    elif workers == 0:
        workers, counted = (cores, f"{cores} local cores") if cores is not None else _cluster_ranks(spark, dist.use_gpu)
        why += f"; {workers} ranks: {counted}"
    log.info("%s (%d rank%s)", why, workers, "" if workers == 1 else "s")
    return dataclasses.replace(dist, backend=backend, num_workers=workers)


def _resolve_gpu(spark, use_gpu: str) -> bool:
    if use_gpu == "true":
        return True
    if use_gpu == "false":
        return False
    if local_master_cores(spark.sparkContext.master) is None:  # the executors' GPUs, not the driver's
        return _conf_int(spark, "spark.executor.resource.gpu.amount") > 0
    return torch.cuda.is_available()


def run_training(spark, spec: WorkerSpec, backend: str, num_workers: int, use_gpu: str = "auto") -> dict[str, Any]:
    """Run :func:`train_worker` on ``num_workers`` ranks with ``backend``; returns rank 0's summary.

    ``backend`` and ``num_workers`` are concrete (see :func:`resolve_distributed`). The ``local`` backend
    trains in this process with all the driver's cores (unless ``train.num_threads`` says otherwise); the
    others log rank 0's progress lines here while they train.
    """
    spec.backend = backend
    spec.use_gpu = _resolve_gpu(spark, use_gpu)
    if backend == "local" or (num_workers == 1 and backend != "horovod"):
        spec.backend = "local"
        if not spec.train_options.get("num_threads"):
            threads = local_master_cores(spark.sparkContext.master) or os.cpu_count() or 1
            spec.train_options = {**spec.train_options, "num_threads": threads}
        summary = train_worker(spec)
        log.info("training finished: local backend, 1 process, %d threads", spec.train_options["num_threads"])
        return summary
    if backend not in ("torch", "horovod"):
        raise ValueError(f"unknown backend {backend!r}")
    with ProgressTail(spec.checkpoint_dir) as tail:
        spec.progress_dir = tail.folder
        summary = _run_ranks(spec, backend, num_workers)
        log.info("training finished: %s backend, %d ranks", backend, num_workers)
    return summary


def _run_ranks(spec: WorkerSpec, backend: str, num_workers: int) -> dict[str, Any]:
    if backend == "torch":
        from pyspark.ml.torch.distributor import TorchDistributor

        distributor = TorchDistributor(num_processes=num_workers, local_mode=False, use_gpu=spec.use_gpu)
        summary: dict[str, Any] | None = distributor.run(train_worker, spec)
        assert summary is not None  # run() returns None only for a script path; a function's result comes back
        return summary
    try:
        import horovod.spark
    except ImportError as exc:
        raise RuntimeError("backend=horovod needs Horovod: run scripts/build_horovod.sh") from exc
    results = horovod.spark.run(train_worker, args=(spec,), num_proc=num_workers, use_gloo=True)
    return next(r for r in results if r["rank"] == 0)
