"""Distributed training for real: 2 ranks on CPU (gloo) through each backend on local[2] Spark."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from toyworld import make_toy_world

from ipinsights.core.config import DistributedOptions, Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.metrics import roc_auc
from ipinsights.score.scorer import Scorer
from ipinsights.train.data import encode_pairs
from ipinsights.train.distributed import local_master_cores, resolve_distributed
from ipinsights.train.trainer import train_model
from ipinsights.train.validation import discriminator_auc

HP = {
    "num_entity_vectors": 600,
    "vector_dim": 32,
    "epochs": 2,
    "mini_batch_size": 256,
    "learning_rate": 0.01,
    "random_negative_sampling_rate": 5,
}
ARGS = [f"--{k}={v}" for k, v in HP.items()]


def _has_horovod() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def world():
    return make_toy_world(n_entities=300, events_per_entity=60, n_test=1000, seed=4)


@pytest.fixture(scope="module")
def events(world, tmp_path_factory):
    """An events table as the ingest job writes it: training days, then a validation day."""
    root = tmp_path_factory.mktemp("events")
    n = world.train.num_rows
    days = np.array(["2026-03-01", "2026-03-02", "2026-03-03"], dtype=object)[np.arange(n) % 3]
    train = world.train.append_column("dt", pa.array(days, pa.string()))
    val = world.validation.append_column("dt", pa.array(["2026-03-04"] * world.validation.num_rows, pa.string()))
    pq.write_to_dataset(pa.concat_tables([train, val]), root, partition_cols=["dt"])
    return root


def _single_process_auc(world) -> float:
    hp = Hyperparameters(**HP)
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, 0)
    val = encode_pairs(world.validation["entity"], world.validation["ip"], hp.num_entity_vectors, 0)
    res = train_model(hp, ModelOptions(), TrainOptions(seed=0, num_threads=1, progress_bar="off"), train, val)
    return res.history[-1].discriminator_auc


def _train(events, out, backend, *extra, workers=2):
    from ipinsights_jobs import train

    argv = [
        "--events",
        str(events),
        "--start-date",
        "2026-03-01",
        "--end-date",
        "2026-03-03",
        "--validation-start-date",
        "2026-03-04",
        "--output",
        str(out),
        "--backend",
        backend,
        "--num-workers",
        str(workers),
        *ARGS,
        *extra,
    ]
    assert train.main(argv) == 0
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "backend",
    [
        "torch",
        pytest.param(
            "horovod",
            marks=pytest.mark.skipif(not _has_horovod(), reason="Horovod not installed: run scripts/build_horovod.sh"),
        ),
    ],
)
@pytest.mark.oldest_spark
@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_match_single_process(spark, world, events, tmp_path, backend):
    metrics = _train(events, tmp_path / "run", backend)
    assert [m["epoch"] for m in metrics] == [1, 2]
    dist_auc = metrics[-1]["discriminator_auc"]
    assert abs(dist_auc - _single_process_auc(world)) <= 0.02
    assert metrics[-1]["comm_bytes"] > 0  # the ranks really exchanged gradients
    # the model was written by rank 0, with the training set's entities
    scorer = Scorer.load(tmp_path / "run" / "model")
    assert scorer.bundle.manifest["training"]["world_size"] == 2
    counts = scorer.training_counts(["user_1", "nobody"])
    assert counts[0] > 0 and counts[1] == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["distributed"]["backend"] == backend


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_resume_continues_from_the_checkpoint(spark, events, tmp_path, caplog):
    """A run stopped after epoch 1 (its checkpoints kept) is continued by --resume, not started over.

    And rank 0 of a TorchDistributor run is another process: its progress lines reach the driver's log
    while training runs, not all at the end (logged before the line saying the ranks have finished).
    """
    out = tmp_path / "run"
    first = _train(events, out, "torch", "--epochs=1")
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert latest["epoch"] == 1 and latest["history"] == first
    caplog.set_level(logging.INFO, logger="ipinsights")
    caplog.clear()  # the resumed run's lines only
    metrics = _train(events, out, "torch", "--epochs=3", "--resume", "--batch_metrics_publish_interval=5")
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    messages = [r.getMessage() for r in caplog.records]
    finished = messages.index("training finished: torch backend, 2 ranks")
    progress = [(i, m) for i, m in enumerate(messages) if m.startswith("rank 0: epoch ")]
    assert any(i < finished for i, _ in progress)  # streamed during training, not collected afterwards
    batches = [m for _, m in progress if " batch " in m]
    assert batches and all("pairs/s=" in m and " ETA " in m and "loss=" in m for m in batches)
    # every line of the epochs it trained, in order (epoch 1 was restored from the checkpoint)
    assert [int(m.split()[3]) for _, m in progress if " done: " in m] == [2, 3]
    assert not list((out / "checkpoints").glob("progress-*"))  # the driver cleaned up
    # Epoch 1 is the first run's own record (its timing included): it was restored, not trained again.
    assert metrics[0] == first[0]
    assert len(Scorer.load(out / "model").bundle.manifest["training"]["epochs"]) == 3
    # checkpoints load without unpickling arbitrary objects
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())
    state = torch.load(out / "checkpoints" / latest["file"], weights_only=True)
    assert int(state["epoch"]) == 3
    assert latest["history"] == metrics


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_checkpoints_belong_to_their_run(spark, events, tmp_path):
    """An earlier run's higher-numbered checkpoints in the folder are neither pruned nor allowed to make
    this run prune its own: latest.json always points at a file, and --resume continues from it."""
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    for old in ("epoch-0009.pt", "epoch-0010.pt"):  # what a longer run, long ago, left behind
        (ckpt / old).write_bytes(b"an earlier run's checkpoint")
    half_written = ckpt / ".epoch-0003-0123456789ab.pt.k3j2h1.tmp"  # a killed process's temporary file
    half_written.write_bytes(b"half a checkpoint")
    _train(events, tmp_path / "run", "local", "--epochs=2", workers=1)
    latest = json.loads((ckpt / "latest.json").read_text())
    assert latest["epoch"] == 2 and (ckpt / latest["file"]).exists()
    assert sorted(latest["files"]) == sorted(p.name for p in ckpt.glob(f"epoch-*-{latest['run_id']}.pt"))
    assert len(latest["files"]) == 2  # checkpoint_keep of this run's own
    assert (ckpt / "epoch-0009.pt").exists() and (ckpt / "epoch-0010.pt").exists()
    assert not half_written.exists()
    metrics = _train(events, tmp_path / "run", "local", "--epochs=3", "--resume", workers=1)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    resumed = json.loads((ckpt / "latest.json").read_text())
    assert resumed["run_id"] == latest["run_id"] and not (ckpt / latest["files"][0]).exists()


class _ExecutorLostError(Exception):
    """Stands for the executor dying after a checkpoint (the test's fault injection)."""


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_retried_attempt_resumes_its_own_run(spark, events, tmp_path, monkeypatch, caplog):
    """Spark retries a failed training stage by running the same spec again: the retry finds its own run's
    checkpoint and continues it (epoch 1 is not trained again) instead of starting over into the folder."""
    from ipinsights.train import distributed

    real_worker, real_save = distributed.train_worker, distributed._save_checkpoint
    attempts: list[str] = []
    first_attempt: list[dict] = []  # its epoch-1 record, as checkpointed before it died

    def dies_after_first_checkpoint(trainer, spec, history, run_id):
        real_save(trainer, spec, history, run_id)
        first_attempt.extend(json.loads((Path(spec.checkpoint_dir) / "latest.json").read_text())["history"])
        raise _ExecutorLostError

    def attempt_twice(spec):
        attempts.append(spec.run_id)
        with monkeypatch.context() as patch, pytest.raises(_ExecutorLostError):
            patch.setattr(distributed, "_save_checkpoint", dies_after_first_checkpoint)
            real_worker(spec)
        attempts.append(spec.run_id)
        return real_worker(spec)  # the retry: the very same spec

    monkeypatch.setattr(distributed, "train_worker", attempt_twice)
    ckpt = tmp_path / "run" / "checkpoints"
    with caplog.at_level("WARNING", logger="ipinsights.train.distributed"):
        metrics = _train(events, tmp_path / "run", "local", "--epochs=2", workers=1)
    assert len(attempts) == 2 and attempts[0] == attempts[1]
    assert any("this retried attempt resumes it" in r.getMessage() for r in caplog.records)
    assert [m["epoch"] for m in first_attempt] == [1]
    assert [m["epoch"] for m in metrics] == [1, 2] and metrics[0] == first_attempt[0]  # not trained again
    assert json.loads((ckpt / "latest.json").read_text())["run_id"] == attempts[0]


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_warm_start_keeps_known_pairs(spark, world, events, tmp_path):
    """Yesterday's model + a day of new data: old pairs still score as normal."""
    _train(events, tmp_path / "day1", "local", workers=1)
    old = Scorer.load(tmp_path / "day1" / "model")
    # a new day: other entities' traffic only
    new_events = tmp_path / "events2"
    names = world.train["entity"].to_numpy(zero_copy_only=False)
    keep = np.isin(names, world.entity_names[:100])
    t = world.train.filter(pa.array(keep)).append_column("dt", pa.array(["2026-03-05"] * int(keep.sum())))
    pq.write_to_dataset(t, new_events, partition_cols=["dt"])
    from ipinsights_jobs import train

    assert (
        train.main(
            [
                "--events",
                str(new_events),
                "--start-date",
                "2026-03-05",
                "--end-date",
                "2026-03-05",
                "--output",
                str(tmp_path / "day2"),
                "--backend",
                "local",
                "--num-workers",
                "1",
                *ARGS,
                "--epochs=1",
                "--warm-start",
                str(tmp_path / "day1" / "model"),
            ]
        )
        == 0
    )
    new = Scorer.load(tmp_path / "day2" / "model")
    old_pairs = world.validation  # held-out pairs of every entity, including those absent on day 2
    rng = np.random.default_rng(0)
    rand_ips = [".".join(map(str, rng.integers(1, 224, 4))) for _ in range(old_pairs.num_rows)]
    for scorer in (old, new):
        pos = scorer.dot_product(old_pairs["entity"], old_pairs["ip"])
        neg = scorer.dot_product(old_pairs["entity"], rand_ips)
        auc = roc_auc(np.r_[pos, neg], np.r_[np.ones(pos.size), np.zeros(neg.size)])
        assert auc >= 0.95
    # a mismatched warm start is refused with a clear error
    with pytest.raises(ValueError, match="shape or hash space differs"):
        train.main(
            [
                "--events",
                str(new_events),
                "--start-date",
                "2026-03-05",
                "--end-date",
                "2026-03-05",
                "--output",
                str(tmp_path / "bad"),
                "--backend",
                "local",
                *ARGS,
                "--vector_dim=16",
                "--warm-start",
                str(tmp_path / "day1" / "model"),
            ]
        )


@pytest.mark.slow
def test_discriminator_auc_helper_agrees(world):
    """Guard for the comparison above: the single-process AUC on this world is meaningfully high."""
    hp = Hyperparameters(**{**HP, "epochs": 1})
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, 0)
    val = encode_pairs(world.validation["entity"], world.validation["ip"], hp.num_entity_vectors, 0)
    res = train_model(hp, ModelOptions(), TrainOptions(num_threads=1, progress_bar="off"), train)
    assert discriminator_auc(res.model, val) > 0.9


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_step(world):
    hp = Hyperparameters(**HP)
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, 0)
    res = train_model(hp, ModelOptions(), TrainOptions(device="cuda", progress_bar="off"), train)
    assert res.model.entity_table.device.type == "cuda" and res.history[-1].loss < res.history[0].loss


def test_spark_submit_script_is_valid_bash():
    assert subprocess.run(["bash", "-n", str(Path("spark-submit.sh"))]).returncode == 0


def test_local_master_cores():
    assert local_master_cores("local[2]") == 2 and local_master_cores("local[3, 2]") == 3
    assert local_master_cores("local") == 1 and local_master_cores("local[*]") == os.cpu_count()
    for cluster in ("yarn", "spark://host:7077", "k8s://https://api:6443", "local-cluster[2,1,1024]", "mesos://m"):
        assert local_master_cores(cluster) is None


def test_auto_backend_is_one_process_locally_and_torch_on_a_cluster(spark, caplog):
    caplog.set_level(logging.INFO, logger="ipinsights")
    auto = DistributedOptions()
    assert (auto.backend, auto.num_workers) == ("auto", 0)  # the default
    local = resolve_distributed(spark, auto)  # the test session's master is local[2]
    assert (local.backend, local.num_workers) == ("local", 1)
    assert "backend=auto chose local: the Spark master local[2] is this machine" in caplog.text
    torch_local = resolve_distributed(spark, DistributedOptions(backend="torch"))
    assert (torch_local.backend, torch_local.num_workers) == ("torch", 2)  # one rank per local core
    assert resolve_distributed(spark, DistributedOptions(backend="torch", num_workers=3)).num_workers == 3

    def cluster(master: str, **conf: str):  # a cluster's driver as resolve_distributed sees it
        return SimpleNamespace(sparkContext=SimpleNamespace(master=master, getConf=lambda: conf))

    on_yarn = resolve_distributed(cluster("yarn", **{"spark.executor.instances": "3"}), auto)
    assert (on_yarn.backend, on_yarn.num_workers) == ("torch", 3)
    assert "backend=auto chose torch: the Spark master yarn is a cluster; 3 ranks: 3 executors" in caplog.text
    gpus = cluster(
        "k8s://https://api:6443", **{"spark.executor.instances": "2", "spark.executor.resource.gpu.amount": "4"}
    )
    assert resolve_distributed(gpus, auto).num_workers == 8  # one rank per GPU
    assert resolve_distributed(gpus, DistributedOptions(use_gpu="false")).num_workers == 2


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_backend_trains_in_one_process_with_every_core(spark, events, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ipinsights")
    from ipinsights_jobs import train

    argv = [
        "--events",
        str(events),
        "--start-date",
        "2026-03-01",
        "--end-date",
        "2026-03-03",
        "--output",
        str(tmp_path / "run"),
        *ARGS,
        "--epochs=1",
    ]
    assert train.main(argv) == 0  # the project's conf/train.yml: backend auto, num_workers 0
    manifest = Scorer.load(tmp_path / "run" / "model").bundle.manifest["training"]
    assert (manifest["backend"], manifest["world_size"]) == ("local", 1)
    assert "training finished: local backend, 1 process, 2 threads" in caplog.text


def test_progress_lines_go_to_the_hook_in_order(world):
    """What a rank hands to the driver: every progress line of rank 0, batches and epoch ends, in order."""
    hp = Hyperparameters(**{**HP, "batch_metrics_publish_interval": 10})
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, 0)
    lines: list[str] = []
    train_model(hp, ModelOptions(), TrainOptions(num_threads=1, progress_bar="off"), train, progress=lines.append)
    steps = -(-len(train) // hp.mini_batch_size)
    seen = [(int(x.split()[1]), int(x.split()[3].split("/")[0])) for x in lines if " batch " in x]
    assert seen == sorted(set(seen))  # in order, none twice (a slow machine adds lines every 15 s)
    assert {(e, b) for e in (1, 2) for b in [*range(10, steps + 1, 10), steps]} <= set(seen)
    assert {x.split()[3].split("/")[1] for x in lines if " batch " in x} == {f"{steps}:"}
    assert [x.split(":")[0] for x in lines if " done: " in x] == ["epoch 1 done", "epoch 2 done"]
    assert all(" pairs/s=" in x and " ETA " in x for x in lines if " batch " in x)
    assert lines[-2].endswith("ETA 0m00s")  # the last batch: nothing left
