"""Kill each job at each of its commit steps, rerun it, and compare with a clean run: nothing lost, nothing twice.

A job runs in a child process (``tests/faults.py``) that SIGKILLs itself right before its k-th commit
step (a store rename, an atomic file replace, the delete of replaced data), for every k its clean run
takes. The same job is then rerun to completion and its output compared, row by row, with a run that
was never interrupted. Each test prints ``faults injected N, runs recovered N, rows lost 0, rows
duplicated 0``.
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

HERE = Path(__file__).parent
pytestmark = [pytest.mark.faults, pytest.mark.slow]

LINE = '{ip} - {user} [{day}/Oct/2026:{hh}:30:00 +0000] "GET /login_success HTTP/1.1" 200 476 "-" "Mozilla/5.0"'


def _log(path: Path, day_hours: Sequence[tuple[int, str]], users: int) -> Path:
    lines = [LINE.format(ip=f"10.{day}.{u}.{h}", user=f"user_{u}", day=day, hh=hh)
             for day, hh in day_hours for u in range(users) for h in (1, 2)]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _run_killed(kill_at: int, steps: Path, module: str, argv: Sequence[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    return subprocess.run([sys.executable, str(HERE / "faults.py"), str(kill_at), str(steps), module, *argv],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)  # fmt: skip


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
    """For each commit step k of a clean run: fresh state, a run killed at k, a rerun; compare rows."""
    clean = tmp_path / "clean"
    prepare(clean)
    steps = tmp_path / "clean-steps.tsv"
    proc = _run_killed(0, steps, module, argv(clean), clean)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want = rows(clean)
    assert want, "the clean run wrote no rows"
    n_steps = len(steps.read_text().splitlines())
    assert n_steps >= 2, steps.read_text()
    injected = recovered = lost = duplicated = 0
    for k in range(1, n_steps + 1):
        work = tmp_path / f"kill-{k}"
        prepare(work)
        proc = _run_killed(k, tmp_path / f"kill-{k}-steps.tsv", module, argv(work), work)
        assert proc.returncode == -9, (k, proc.returncode, proc.stderr[-3000:])  # it died at step k
        injected += 1
        rerun(work)
        got = rows(work)
        lost_k, dup_k = _compare(got, want)
        lost, duplicated = lost + lost_k, duplicated + dup_k
        recovered += int(lost_k == dup_k == 0)
        assert (lost_k, dup_k) == (0, 0), (k, steps.read_text().splitlines()[k - 1])
    print(f"{module}: faults injected {injected}, runs recovered {recovered}, rows lost {lost}, "
          f"rows duplicated {duplicated}")  # fmt: skip


@pytest.mark.spark
def test_ingest_killed_at_each_commit_step(spark, tmp_path):
    """A table already holds host1's days; host2's ingest (one shared day, one new day) is killed at each step."""
    from ipinsights_jobs import ingest

    logs = tmp_path / "logs"
    host1 = _log(logs / "host1.log", [(10, "08"), (11, "08")], users=5)
    host2 = _log(logs / "host2.log", [(11, "20"), (12, "20")], users=4)

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
TRAIN_ARGS = ["--backend", "local", "--num-workers", "1", "--epochs=2", "--num_entity_vectors=128", "--vector_dim=8",
              "--mini_batch_size=64", "--num_ip_encoder_layers=0", "--progress_bar=off"]  # fmt: skip


@pytest.fixture(scope="module")
def events(spark, tmp_path_factory):
    """Four days of 30 users, ingested: the input of the train and score fault tests."""
    from ipinsights_jobs import ingest

    root = tmp_path_factory.mktemp("events")
    log = _log(root / "logs" / "web.log", [(d, hh) for d in (10, 11, 12, 13) for hh in ("07", "19")], users=30)
    assert ingest.main([f"--inputs={log}", f"--output={root / 'events'}", "--engine=arrow"]) == 0
    return root / "events"


@pytest.mark.spark
def test_train_killed_at_each_checkpoint_and_model_write(spark, events, tmp_path):
    """Killed at each checkpoint and model-file step, then rerun with --resume: the run finishes with every
    epoch recorded once, and a model directory is never seen half written."""
    from ipinsights.storage.modelfile import load_model
    from ipinsights_jobs import train

    def args(root: Path, *extra: str) -> list[str]:
        return ["--events", str(events), "--start-date", TRAIN_DAYS[0], "--end-date", TRAIN_DAYS[1],
                "--validation-start-date", VALIDATION_DAY, "--validation-end-date", VALIDATION_DAY,
                "--output", str(root / "run"), *TRAIN_ARGS, *extra]  # fmt: skip

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
    assert train.main(["--events", str(events), "--start-date", TRAIN_DAYS[0], "--end-date", TRAIN_DAYS[1],
                       "--output", str(model_run), *TRAIN_ARGS]) == 0  # fmt: skip
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
