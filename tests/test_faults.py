"""Kill each job at each of its commit steps, rerun it, and compare with a clean run: nothing lost, nothing twice.

A job's clean run happens in a child process (``tests/faults.py``) that records, right before each of its
commit steps (a store rename, an atomic file replace, the delete of replaced data), a copy of the
folder it works in: exactly what a SIGKILL at that step leaves on disk. For every step k that state is
put back, the job is rerun to completion on it, and its output compared, row by row, with the clean
run's. One run per job is also SIGKILLed for real, at a middle step, and rerun the same way: the kill
and the recorded states are held to the same outcome. (Killing a fresh child at every step, as this
suite first did, cost a Spark start-up per step: 9.5 minutes of CI for the three jobs.) Each test prints
``faults injected N, runs recovered N, rows lost 0, rows duplicated 0``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from concurrency import four_days, write_log

HERE = Path(__file__).parent
pytestmark = [pytest.mark.faults, pytest.mark.slow]


def _run_killed(
    kill_at: int, steps: Path, module: str, argv: Sequence[str], cwd: Path, snapshot: tuple[Path, Path] | None = None
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    if snapshot is not None:
        env["FAULTS_SNAPSHOT"] = f"{snapshot[0]}:{snapshot[1]}"
    return subprocess.run(
        [sys.executable, str(HERE / "faults.py"), str(kill_at), str(steps), module, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _compare(got: collections.Counter, want: collections.Counter) -> tuple[int, int]:
    """(rows lost, rows duplicated or foreign) of ``got`` against the clean run's ``want``."""
    return sum((want - got).values()), sum((got - want).values())


def _kill_everywhere(
    tmp_path: Path,
    module: str,
    argv: Callable[[Path], list[str]],
    prepare: Callable[[Path], None],
    rerun: Callable[[Path], None],
    rows: Callable[[Path], collections.Counter],
) -> None:
    """A clean run recording the state before each commit step k; for each k: that state, a rerun, the
    rows compared with the clean run's. Then one real SIGKILL at a middle step, rerun and compared alike."""
    clean, states = tmp_path / "clean", tmp_path / "states"
    prepare(clean)
    steps = tmp_path / "clean-steps.tsv"
    proc = _run_killed(0, steps, module, argv(clean), clean, snapshot=(clean, states))
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = rows(clean)
    assert want, "the clean run wrote no rows"
    step_lines = steps.read_text().splitlines()
    n_steps = len(step_lines)
    assert n_steps >= 2 and sorted(int(p.name) for p in states.iterdir()) == list(range(1, n_steps + 1)), step_lines
    injected = recovered = lost = duplicated = 0

    def check(k: int, root: Path) -> None:
        nonlocal injected, recovered, lost, duplicated
        injected += 1
        rerun(root)
        lost_k, dup_k = _compare(rows(root), want)
        lost, duplicated = lost + lost_k, duplicated + dup_k
        recovered += int(lost_k == dup_k == 0)
        assert (lost_k, dup_k) == (0, 0), (k, step_lines[k - 1])

    for k in range(1, n_steps + 1):
        shutil.rmtree(clean)
        shutil.copytree(states / str(k), clean, symlinks=True)  # where it was: its absolute paths hold
        check(k, clean)
    k = (n_steps + 1) // 2
    killed = tmp_path / "killed"
    prepare(killed)
    proc = _run_killed(k, tmp_path / "killed-steps.tsv", module, argv(killed), killed)
    assert proc.returncode == -9, (k, proc.returncode, proc.stderr[-3000:])  # it died at step k
    check(k, killed)
    print(
        f"{module}: faults injected {injected} ({n_steps} recorded states, 1 SIGKILL), runs recovered "
        f"{recovered}, rows lost {lost}, rows duplicated {duplicated}"
    )


@pytest.mark.spark
def test_ingest_killed_at_each_commit_step(spark, tmp_path):
    """A table already holds host1's days; host2's ingest (one shared day, one new day) is killed at each step."""
    from ipinsights_jobs import ingest

    logs = tmp_path / "logs"
    host1 = write_log(logs / "host1.log", [(10, "08"), (11, "08")], users=5)
    host2 = write_log(logs / "host2.log", [(11, "20"), (12, "20")], users=4)

    def args(root: Path, log: Path) -> list[str]:
        return [f"--inputs={log}", f"--output={root / 'events'}", "--engine=arrow", "--master=local[1]"]

    prepared = tmp_path / "prepared"
    assert ingest.main(args(prepared, host1)) == 0  # the table holds host1's days, one of which host2 shares

    def prepare(root: Path) -> None:
        shutil.copytree(prepared, root)

    def rerun(root: Path) -> None:
        assert ingest.main(args(root, host2)) == 0

    def rows(root: Path) -> collections.Counter:
        t = ds.dataset(root / "events", format="parquet", partitioning="hive").to_table()
        cols = [t[c].to_pylist() for c in ("entity", "ip", "ts", "source_file", "dt")]
        return collections.Counter(zip(*cols, strict=True))

    _kill_everywhere(tmp_path, "ipinsights_jobs.ingest", lambda root: args(root, host2), prepare, rerun, rows)


TRAIN_DAYS, VALIDATION_DAY, SCORE_DAY = ("2026-10-10", "2026-10-11"), "2026-10-12", "2026-10-13"
TRAIN_ARGS = [
    "--config",
    str(HERE.parent / "conf" / "demo.yml"),  # the demo's settings (conf/train.yml: SageMaker's slower defaults)
    "--backend",
    "local",
    "--num-workers",
    "1",
    "--epochs=2",
    "--num_entity_vectors=128",
    "--vector_dim=8",
    "--mini_batch_size=64",
    "--num_ip_encoder_layers=0",
    "--progress_bar=off",
]


@pytest.fixture(scope="module")
def events(spark, tmp_path_factory):
    """Four days of 30 users, ingested: the input of the train and score fault tests."""
    return four_days(tmp_path_factory.mktemp("events"))


@pytest.mark.spark
def test_train_killed_at_each_checkpoint_and_model_write(spark, events, tmp_path):
    """Killed at each checkpoint and model-file step, then rerun with --resume: the run finishes with every
    epoch recorded once, and a model directory is never seen half written."""
    from ipinsights.storage.modelfile import load_model
    from ipinsights_jobs import train

    def args(root: Path, *extra: str) -> list[str]:
        return [
            "--events",
            str(events),
            "--start-date",
            TRAIN_DAYS[0],
            "--end-date",
            TRAIN_DAYS[1],
            "--validation-start-date",
            VALIDATION_DAY,
            "--validation-end-date",
            VALIDATION_DAY,
            "--output",
            str(root / "run"),
            *TRAIN_ARGS,
            *extra,
        ]

    def prepare(root: Path) -> None:
        root.mkdir(parents=True)

    def rerun(root: Path) -> None:
        if (root / "run" / "model").exists():  # what the kill left is a whole model or none
            load_model(root / "run" / "model")
        assert train.main(args(root, "--resume")) == 0

    def rows(root: Path) -> collections.Counter:
        load_model(root / "run" / "model")
        latest = json.loads((root / "run" / "checkpoints" / "latest.json").read_text())
        assert (root / "run" / "checkpoints" / latest["file"]).exists()
        epochs = [json.loads(x)["epoch"] for x in (root / "run" / "metrics.jsonl").read_text().splitlines()]
        return collections.Counter(f"epoch {e}" for e in epochs)

    _kill_everywhere(tmp_path, "ipinsights_jobs.train", args, prepare, rerun, rows)


@pytest.mark.spark
def test_score_killed_at_each_step_of_a_day_write(spark, events, tmp_path):
    """A day already scored is scored again (a new threshold) and killed at each step of its write: the rerun
    leaves exactly the clean run's scores and flagged rows for that day, and the other day untouched."""
    from ipinsights_jobs import score, train

    model_run = tmp_path / "model-run"
    assert (
        train.main(
            [
                "--events",
                str(events),
                "--start-date",
                TRAIN_DAYS[0],
                "--end-date",
                TRAIN_DAYS[1],
                "--output",
                str(model_run),
                *TRAIN_ARGS,
            ]
        )
        == 0
    )
    prepared = tmp_path / "prepared"

    def args(root: Path, threshold: str = "0.0", day: str = SCORE_DAY) -> list[str]:
        return [
            "--date",
            day,
            "--threshold",
            threshold,
            f"--model={model_run / 'model'}",
            f"--events={events}",
            f"--scores={root / 'scores'}",
            f"--flagged={root / 'flagged'}",
            f"--reports={root / 'reports'}",
        ]

    assert score.main(args(prepared, "5.0", VALIDATION_DAY)) == 0  # another day, which must stay as it is
    assert score.main(args(prepared, "5.0")) == 0  # the day as first scored

    def prepare(root: Path) -> None:
        shutil.copytree(prepared, root)

    def rerun(root: Path) -> None:
        assert score.main(args(root)) == 0

    def rows(root: Path) -> collections.Counter:
        out: collections.Counter = collections.Counter()
        for table in ("scores", "flagged"):
            if not any((root / table).glob("dt=*")):
                continue  # no day has rows (a table is created by its first rows)
            t = ds.dataset(root / table, format="parquet", partitioning="hive").to_table()
            cols = [t[c].to_pylist() for c in ("dt", "entity", "ip")]
            out.update((table, *row) for row in zip(*cols, strict=True))
        return out

    _kill_everywhere(tmp_path, "ipinsights_jobs.score", args, prepare, rerun, rows)
