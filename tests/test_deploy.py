"""The deployment examples in deploy/ parse, name jobs that exist, and pass only options the jobs accept.

Each command is checked by the job's own ``main``: its argument parser, then its typed config loaded with
the command's ``--name=value`` settings (an unknown or out-of-range setting is refused there). Only the
work is left out: ``Job.run`` is replaced by a dry run that stops after loading the config. The options
must also be ones the cluster test (``tests/test_cluster.py``, built by ``tests/cluster.py``) runs.
"""

from __future__ import annotations

import importlib
import json
import subprocess
from pathlib import Path

import pytest
from cluster import ingest_args, score_args, train_args

from ipinsights.core.config import ConfigError
from ipinsights_jobs import _common

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DATES = {
    "train": ("2026-01-01", "2026-01-07"),
    "validation": ("2026-01-08", "2026-01-08"),
    "test": ("2026-01-09", "2026-01-09"),
}
#: What the cluster test passes to each job (the reference for a deployment's options).
TESTED = {
    "ingest": ingest_args("s3://b/logs", "s3://b/events"),
    "train": [*train_args("s3://b/events", "s3://b/run", DATES, "torch", 1), "--resume"],
    "score": score_args("s3://b/events", "s3://b/run", "s3://b", DATES),
}


def emr_commands() -> list[tuple[str, list[str]]]:
    """(job, its arguments) of every step of deploy/emr/steps.json."""
    steps = json.loads((DEPLOY / "emr/steps.json").read_text())
    commands = []
    for step in steps:
        assert step["Jar"] == "command-runner.jar" and step["Args"][0] == "spark-submit", step
        args = step["Args"]
        script = next(i for i, a in enumerate(args) if a.endswith(".py"))  # spark-submit's application
        commands.append((_job_name(args[script]), args[script + 1 :]))
    return commands


def databricks_commands() -> list[tuple[str, list[str]]]:
    """(job, its arguments) of every task of deploy/databricks/job.json."""
    job = json.loads((DEPLOY / "databricks/job.json").read_text())
    clusters = {c["job_cluster_key"] for c in job["job_clusters"]}
    commands = []
    for task in job["tasks"]:
        assert task["job_cluster_key"] in clusters, task
        py = task["spark_python_task"]
        commands.append((_job_name(py["python_file"]), py.get("parameters", [])))
    return commands


def _job_name(script: str) -> str:
    folder, name = script.rsplit("/", 2)[-2:]
    assert folder == "jobs" and name.endswith(".py"), f"{script} is not one of the project's jobs/*.py"
    return name[: -len(".py")]


def check_command(job: str, args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail unless ``jobs/JOB.py`` exists and its ``main`` accepts ``args`` (parser and config settings)."""
    if not (REPO / "jobs" / f"{job}.py").is_file():
        pytest.fail(f"no job {job!r}: jobs/{job}.py does not exist")
    module = importlib.import_module(f"ipinsights_jobs.{job}")
    loaded = []

    def dry_run(self, parsed, body, config=None, overrides=()):
        # A --config names the deployment's copy of conf/JOB.yml: check the settings against the project's.
        local = REPO / "conf" / Path(config).name if config is not None else None
        loaded.append(self.load(local, overrides))
        return 0

    monkeypatch.setattr(_common.Job, "run", dry_run)
    try:
        status = module.main(args)
    except SystemExit as exc:  # argparse refused an option
        pytest.fail(f"{job} refuses {args}: exit status {exc.code}")
    except ConfigError as exc:  # an unknown or invalid --name=value setting
        pytest.fail(f"{job} refuses {args}: {exc}")
    assert status == 0 and loaded, (job, args)
    tested = {_option(a) for a in TESTED[job]} | {"--config"}
    untested = [a for a in args if a.startswith("--") and _option(a) not in tested]
    assert not untested, f"{job}: {untested} not run by the cluster test (tests/cluster.py)"


def _option(arg: str) -> str:
    return arg.split("=", 1)[0]


@pytest.mark.parametrize("platform", ["emr", "databricks"])
def test_deploy_commands_are_accepted_by_the_jobs(platform, monkeypatch):
    commands = {"emr": emr_commands, "databricks": databricks_commands}[platform]()
    assert [job for job, _ in commands] == ["ingest", "train", "score"]
    for job, args in commands:
        check_command(job, args, monkeypatch)


@pytest.mark.parametrize(
    "job, args, message",
    [
        ("nosuchjob", [], "no job 'nosuchjob'"),
        ("ingest", ["--inputs=s3://b/logs/*", "--ouput=s3://b/events"], "ouput"),
        ("train", [*TESTED["train"], "--epoch", "5"], "refuses"),
        ("train", [*TESTED["train"], "--warm-start", "s3://b/old/model"], "not run by the cluster test"),
    ],
)
def test_check_command_refuses_bad_commands(job, args, message, monkeypatch):
    """The checker is not a formality: a missing job, a misspelt setting or flag, an untested option fail."""
    with pytest.raises((pytest.fail.Exception, AssertionError)) as info:
        check_command(job, args, monkeypatch)
    assert message in str(info.value)


def test_deploy_files_parse():
    """The shell scripts are valid bash; the Databricks wheel is the project's current version."""
    for script in sorted(DEPLOY.rglob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)
    version: dict[str, str] = {}
    exec((REPO / "ipinsights/_version.py").read_text(), version)
    job = json.loads((DEPLOY / "databricks/job.json").read_text())
    wheels = {lib["whl"].rsplit("/", 1)[-1] for task in job["tasks"] for lib in task.get("libraries", [])}
    assert wheels == {f"ipinsights-{version['__version__']}-py3-none-any.whl"}
