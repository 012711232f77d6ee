"""The wheel is the product: built from the checkout, installed alone (no checkout on the path, another
working directory), its ``ipinsights`` command runs every job with the defaults shipped inside it.

The wheel goes into a fresh virtualenv whose dependencies (torch, pyspark, ...) are those of the test's
own environment, reached through a ``.pth`` line: a ``.pth`` file inside that folder is not read from
there, so the checkout's editable install stays out of sight and only the wheel's code can run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A virtualenv with only the built wheel installed; returns its bin folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        cwd=tmp,
    )
    (wheel,) = dist.glob("ipinsights-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = ("train", "score", "demo")  # demo.yml: the settings the installed pipeline trains with
    assert all(f"ipinsights_jobs/conf/{c}.yml" in names for c in shipped), names
    assert not any(n.startswith(("tests/", "conf/", "jobs/")) for n in names), names
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=False)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(purelib), str(wheel)],
        check=True,
        cwd=tmp,
    )
    # pip --target installs no console script: write the one setup.py declares, as pip would.
    script = env_dir / "bin" / "ipinsights"
    script.write_text(
        f"#!{env_dir / 'bin' / 'python'}\nimport sys\nfrom ipinsights_jobs.cli import main\nsys.exit(main())\n"
    )
    script.chmod(0o755)
    return env_dir / "bin"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    return env


def test_the_installed_package_is_the_wheels_not_the_checkouts(installed, tmp_path):
    code = "import ipinsights, ipinsights_jobs._common as c; print(ipinsights.__file__, c.default_config('train'))"
    out = subprocess.run(
        [installed / "python", "-c", code], check=True, capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    where, conf = out.stdout.split()
    assert str(ROOT) not in where and str(ROOT) not in conf and conf.endswith("ipinsights_jobs/conf/train.yml"), (
        out.stdout
    )


def test_every_job_is_a_subcommand(installed, tmp_path):
    out = subprocess.run([installed / "ipinsights", "--help"], capture_output=True, text=True, cwd=tmp_path, env=_env())
    assert out.returncode == 0, out.stderr
    for command in (
        "pipeline",
        "generate",
        "ingest",
        "train",
        "score",
        "evaluate",
        "serve",
        "export-embeddings",
        "tune",
    ):
        assert command in out.stdout, command
    out = subprocess.run(
        [installed / "ipinsights", "train", "--help"], capture_output=True, text=True, cwd=tmp_path, env=_env()
    )
    assert out.returncode == 0 and "--events TABLE" in out.stdout and "--train CSV" in out.stdout, out
    out = subprocess.run(
        [installed / "ipinsights", "score", "--date", "2024-01-01", "--threshold", "1", "--target-fpr", "0.1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    assert out.returncode == 2 and "exactly one" in out.stderr, out  # the shipped score.yml was loaded


@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_installed_wheel_runs_the_demo_pipeline(installed, tmp_path):
    w = tmp_path / "W"
    out = subprocess.run(
        [installed / "ipinsights", "pipeline", "--workdir", str(w), "--users", "200", "--epochs", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "test AUC per attack kind (model)" in out.stdout and (w / "evaluation.json").exists()
    assert list((w / "reports").glob("dt=*/report.html"))
    hp = json.loads((w / "run" / "config.json").read_text())["hyperparameters"]
    assert (hp["learning_rate"], hp["mini_batch_size"]) == (0.01, 1000)  # the packaged demo.yml, not SageMaker's
