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
    out = subprocess.run(["bash", str(SCRIPT), "--dry-run", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()  # fmt: skip
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
    missing = subprocess.run(["bash", str(SCRIPT), "--dry-run", "train", "--config", "nope.yml"], cwd=tmp_path,
                             capture_output=True, text=True)  # fmt: skip
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
    assert option(cmd, "--files").split(",") == [str(ROOT / "conf" / "tune.yml"), str(ROOT / "conf" / "train.yml")]
