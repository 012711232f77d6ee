"""spark-submit.sh's decisions, read from its --dry-run: the environment and the command it would run."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "spark-submit.sh"


def dry_run(*args: str, cwd: Path) -> tuple[dict[str, str | None], list[str]]:
    """(environment it would set, spark-submit command) of ``spark-submit.sh --dry-run ARGS`` run in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_IP", "SPARK_MASTER", "PYSPARK_PYTHON")}
    out = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    settings: dict[str, str | None] = {}
    for line in out[:-1]:
        name, _, value = line.partition("=")
        settings[name.removesuffix(" unset")] = shlex.split(value)[0] if value else None
    return settings, shlex.split(out[-1])


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_only_a_local_master_is_pinned_to_the_loopback_address(tmp_path):
    for master in ("local[2]", "local", "local[*]"):
        env, cmd = dry_run("--master", master, "ingest", "--output", "x", cwd=tmp_path)
        assert env["SPARK_LOCAL_IP"] == "127.0.0.1" and option(cmd, "--master") == master
    for master in ("yarn", "spark://head:7077", "k8s://https://api:6443", "local-cluster[2,1,1024]"):
        env, cmd = dry_run("--master", master, "ingest", "--output", "x", cwd=tmp_path)
        assert env["SPARK_LOCAL_IP"] is None and option(cmd, "--master") == master
    env, _ = dry_run("ingest", cwd=tmp_path)  # the default master is local[2]
    assert env["SPARK_LOCAL_IP"] == "127.0.0.1" and env["PYSPARK_PYTHON"]


def test_configs_are_found_from_any_working_directory(tmp_path):
    _, cmd = dry_run("train", "--output", "x", cwd=tmp_path)  # default: the project's conf/train.yml
    assert option(cmd, "--config") == option(cmd, "--files") == str(ROOT / "conf" / "train.yml")
    # A relative --config: the working directory's file first, else the project's.
    _, cmd = dry_run("train", "--config", "conf/train.yml", cwd=tmp_path)
    assert option(cmd, "--config") == str(ROOT / "conf" / "train.yml")
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "train.yml").write_text("hyperparameters: {}\n")
    _, cmd = dry_run("train", "--config=conf/train.yml", cwd=tmp_path)
    assert f"--config={tmp_path / 'conf' / 'train.yml'}" in cmd
    missing = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "train", "--config", "nope.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "config file 'nope.yml' not found" in missing.stderr


def test_tune_ships_its_base_training_config(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "tune.yml").write_text("base_config: 'sub/base.yml'  # relative to this file\n")
    (tmp_path / "sub" / "base.yml").write_text("hyperparameters: {}\n")
    _, cmd = dry_run("tune", "--config", "tune.yml", cwd=tmp_path)
    assert option(cmd, "--files").split(",") == [str(tmp_path / "tune.yml"), str(tmp_path / "sub" / "base.yml")]
    assert "--train-config" not in cmd  # the driver reads tune.yml where it is, and finds sub/base.yml beside it
    # In cluster mode the files land in the driver's work dir under their base names: the job is told so.
    _, cmd = dry_run("--master", "yarn", "--deploy-mode", "cluster", "tune", "--config", "tune.yml", cwd=tmp_path)
    assert option(cmd, "--config") == "tune.yml" and option(cmd, "--train-config") == "base.yml"
    _, cmd = dry_run("--master", "yarn", "--deploy-mode", "cluster", "tune", cwd=tmp_path)  # the project's
    assert option(cmd, "--files").split(",") == [str(ROOT / "conf" / "tune.yml"), str(ROOT / "conf" / "demo.yml")]


def _project_copy(tmp_path: Path) -> tuple[Path, Path]:
    """The project's scripts and setup.py in ``tmp_path``, with a stand-in .venv whose ``python`` only logs
    what it is asked (pip installs included) and stand-ins for the Horovod build and the jar download:
    what setup.sh decides to install is recorded without installing anything."""
    root, log = tmp_path / "project", tmp_path / "calls.log"
    (root / "scripts").mkdir(parents=True)
    for name in (
        "setup.py",
        "scripts/setup.sh",
        "scripts/demo.sh",
        "scripts/constraints-spark4.txt",
        "scripts/constraints-spark3.5.txt",
    ):
        (root / name).write_bytes((ROOT / name).read_bytes())
    for name, what in (("build_horovod.sh", "horovod build"), ("fetch_s3a_jars.sh", "s3a jars")):
        (root / "scripts" / name).write_text(f'echo "{what}" >> "{log}"\n')
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "chromium"):  # python -c (a check, a message) is not worth logging
        (bin_dir / name).write_text(f'#!/bin/sh\n[ "$1" = -c ] || echo "{name} $*" >> "{log}"\n')
        (bin_dir / name).chmod(0o755)
    (bin_dir / "activate").write_text(f'PATH="{bin_dir}:$PATH"\n')
    return root, log


def _run(root: Path, log: Path, *cmd: str, **env: str) -> str:
    log.write_text("")
    subprocess.run(cmd, cwd=root, env={**os.environ, **env}, check=True, capture_output=True)
    return log.read_text()


def test_setup_installs_only_the_parts_asked_for(tmp_path):
    root, log = _project_copy(tmp_path)
    calls = _run(root, log, "bash", "scripts/demo.sh", "--users=100")  # the demo: no Horovod, no test tools
    assert "torch==2.13.0" in calls and "-e .[spark,serving,tune]" in calls and "jobs/pipeline.py --users=100" in calls
    assert "-c scripts/constraints-spark4.txt" in calls  # the newest Spark, unless IPINSIGHTS_SPARK says otherwise
    assert "horovod build" not in calls and "[spark,serving,tune,dev]" not in calls and "s3a jars" not in calls
    # The tests after the demo install what is missing, and only that.
    calls = _run(root, log, "bash", "scripts/setup.sh", "test", "horovod")
    assert "torch" not in calls and "[spark,serving,tune,dev]" in calls and "s3a jars" in calls
    assert "horovod build" in calls
    assert _run(root, log, "bash", "scripts/setup.sh", "test", "horovod") == ""  # all in place: nothing to do
    stamp = (root / ".venv" / ".ipinsights-setup").read_text().split()
    assert stamp[::2] == ["base", "horovod", "test"]
    # A changed Horovod build redoes Horovod alone; a new torch pin (setup.py) redoes every part asked for.
    with (root / "scripts" / "build_horovod.sh").open("a") as fh:
        fh.write("# changed\n")
    assert _run(root, log, "bash", "scripts/setup.sh", "test", "horovod") == "horovod build\n"
    (root / "setup.py").write_text((root / "setup.py").read_text() + "# changed\n")
    calls = _run(root, log, "bash", "scripts/setup.sh")
    assert "torch==2.13.0" in calls and "horovod build" not in calls
    calls = _run(root, log, "bash", "scripts/demo.sh", IPINSIGHTS_BACKEND="horovod")  # asked for: built
    assert "torch" not in calls and "horovod build" in calls and "pipeline.py --backend horovod" in calls
