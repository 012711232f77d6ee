"""The deployment definitions in deploy/ run commands the jobs accept, all platforms the same three.

Every command line of every definition (the EMR steps, API shape and CLI shape; the EMR Serverless job runs;
the Databricks job and its bundle; the Airflow DAG, read with ``ast`` since Airflow is not installed; the
examples in spark-submit.sh's header) is rendered with a run date and given to the real ``ipinsights``
parser (``ipinsights_jobs.cli.main``): its subcommand's argument parser, then its typed config loaded with
the command's ``--name=value`` settings (an unknown or out-of-range setting is refused there). Only the work
is left out: ``Job.run`` is replaced by a dry run that stops after loading the config. A definition's
options must also be ones an end-to-end test runs: the cluster test (``tests/cluster.py``) or the
date-driven runs (``tests/test_schedule.py``, ``tests/test_ingest_dates.py``).
tests/test_deploy_services.py validates the same files against the services' own models (botocore, the
Databricks SDK).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import runpy
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cluster import ingest_args, score_args, train_args

from ipinsights.core.config import ConfigError
from ipinsights_jobs import _common, cli

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
JOBS = ["ingest", "train", "score"]
#: The run date the tests render the scheduler's placeholders with.
RUN_DATE = "2026-01-09"
#: Each platform's run date: Airflow's (also in the EMR files, which Airflow's EMR operators render), and
#: the Databricks job's parameter (its default: ``{{job.start_time.iso_date}}``).
PLACEHOLDERS = {"airflow": "{{ ds }}", "databricks": "{{job.parameters.run_date}}"}
DRIVER = "driver.py"  # deploy/driver.py: spark-submit's application on EMR and EMR Serverless
DATES = {
    "train": ("2026-01-01", "2026-01-07"),
    "validation": ("2026-01-08", "2026-01-08"),
    "test": ("2026-01-09", "2026-01-09"),
}
#: What the cluster test passes to each job.
CLUSTER_TESTED = {
    "ingest": ingest_args("s3://b/logs", "s3://b/events"),
    "train": [*train_args("s3://b/events", "s3://b/run", DATES, "torch", 1), "--resume"],
    "score": score_args("s3://b/events", "s3://b/run", "s3://b", DATES),
}
#: The end-to-end tests of date-driven runs (file, test) and the options each runs (checked in its source).
DATE_TESTED = {
    "ingest": ("tests/test_ingest_dates.py", "test_a_day_reads_its_own_logs_and_a_backfill_each_days", {"--date"}),
    "train": ("tests/test_schedule.py", "test_train_and_score_driven_by_one_date", {"--date"}),
    "score": ("tests/test_schedule.py", "test_train_and_score_driven_by_one_date", {"--date", "--model"}),
}


def render(value: Any, placeholder: str, date: str = RUN_DATE) -> Any:
    """``value`` (strings, lists, dicts) with the run-date placeholder replaced by ``date``."""
    if isinstance(value, str):
        return value.replace(placeholder, date)
    if isinstance(value, list):
        return [render(v, placeholder, date) for v in value]
    if isinstance(value, dict):
        return {k: render(v, placeholder, date) for k, v in value.items()}
    return value


def after_driver(args: list[str]) -> list[str]:
    """The ``ipinsights`` command of a spark-submit command line: what follows the driver."""
    assert args[0] == "spark-submit", args
    app = next((i for i, a in enumerate(args) if a.endswith(".py")), None)
    assert app is not None and args[app].rsplit("/", 1)[-1] == DRIVER, f"{args}: not deploy/{DRIVER}"
    return args[app + 1 :]


# The commands of each definition: ipinsights argv (subcommand first), placeholders unrendered.


def emr_commands() -> list[list[str]]:
    """deploy/emr/steps-api.json: ``command-runner.jar`` running spark-submit with the driver."""
    commands = []
    for step in json.loads((DEPLOY / "emr/steps-api.json").read_text()):
        jar_step = step["HadoopJarStep"]
        assert jar_step["Jar"] == "command-runner.jar", step
        commands.append(after_driver(jar_step["Args"]))
    return commands


def serverless_requests() -> dict[str, dict[str, Any]]:
    """deploy/emr-serverless/JOB.json: one ``start-job-run`` request per job."""
    return {job: json.loads((DEPLOY / f"emr-serverless/{job}.json").read_text()) for job in JOBS}


def serverless_commands() -> list[list[str]]:
    commands = []
    for request in serverless_requests().values():
        submit = request["jobDriver"]["sparkSubmit"]
        assert submit["entryPoint"].rsplit("/", 1)[-1] == DRIVER, submit
        commands.append(submit["entryPointArguments"])
    return commands


def databricks_job() -> dict[str, Any]:
    return json.loads((DEPLOY / "databricks/job.json").read_text())


def bundle_job() -> dict[str, Any]:
    """The one job of deploy/databricks/databricks.yml."""
    bundle = yaml.safe_load((DEPLOY / "databricks/databricks.yml").read_text())
    (job,) = bundle["resources"]["jobs"].values()
    return job


def databricks_commands(job: dict[str, Any]) -> list[list[str]]:
    """Each task's ``python_wheel_task``: the wheel's ``ipinsights`` entry point with the command."""
    commands = []
    for task in job["tasks"]:
        wheel_task = task["python_wheel_task"]
        assert (wheel_task["package_name"], wheel_task["entry_point"]) == ("ipinsights", "ipinsights"), task
        commands.append(wheel_task["parameters"])
    return commands


def airflow_commands(path: Path = DEPLOY / "airflow/ipinsights_dag.py") -> list[list[str]]:
    """Every spark-submit command the DAG holds (any list literal that starts with ``spark-submit``),
    read with ``ast``: Airflow is not installed here."""
    lists = [node for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.List)]
    found = [node for node in lists if node.elts and _constant(node.elts[0]) == "spark-submit"]
    return [after_driver(ast.literal_eval(node)) for node in sorted(found, key=lambda n: n.lineno)]


def airflow_steps(path: Path = DEPLOY / "airflow/ipinsights_dag.py") -> Any:
    """The value of the DAG's ``STEPS = [...]``."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["STEPS"]:
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path}: no STEPS = [...]")


def _constant(node: ast.expr) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


def spark_submit_examples() -> list[list[str]]:
    """The ``./spark-submit.sh ...`` lines of spark-submit.sh's header, as argument lists."""
    lines = iter((REPO / "spark-submit.sh").read_text().splitlines())
    for line in lines:
        if line.startswith("# Examples"):
            break
    examples = []
    for line in lines:
        text = line.removeprefix("#").strip()
        if not text.startswith("./spark-submit.sh "):
            break
        examples.append(shlex.split(text)[1:])
    assert examples, "spark-submit.sh's header has no example"
    return examples


# The check: the real parser, with the work left out.


def check_command(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, run: Callable[[list[str]], Any] = cli.main, tested: bool = True
) -> None:
    """Fail unless ``ipinsights ARGV`` is accepted: the subcommand, its parser and its config settings. With
    ``tested``, also unless every option is one an end-to-end test runs (:func:`reference_options`)."""
    job = argv[0]
    if job not in cli.COMMANDS:
        pytest.fail(f"no subcommand {job!r}: ipinsights has {sorted(cli.COMMANDS)}")
    loaded = []

    def dry_run(self, parsed, body, config=None, overrides=()):
        # A --config names the deployment's copy of conf/JOB.yml: check the settings against the project's.
        local = REPO / "conf" / Path(config).name if config is not None else None
        loaded.append(self.load(local, overrides))
        return 0

    monkeypatch.setattr(_common.Job, "run", dry_run)
    try:
        status = run(argv)
    except SystemExit as exc:  # argparse refused an option (or the driver exited with the status)
        status = exc.code
    except ConfigError as exc:  # an unknown or invalid --name=value setting
        pytest.fail(f"ipinsights refuses {argv}: {exc}")
    if status != 0:
        pytest.fail(f"ipinsights refuses {argv}: exit status {status}")
    assert loaded, f"{argv}: no config loaded"
    if tested:
        reference = reference_options()[job] | {"--config"}
        untested = [a for a in argv[1:] if a.startswith("--") and _option(a) not in reference]
        assert not untested, f"{job}: {untested} run by no end-to-end test (tests/cluster.py, DATE_TESTED)"


def via_driver(argv: list[str]) -> Any:
    """Run deploy/driver.py (what spark-submit runs on EMR) with ``argv``: it exits with the status."""
    saved = sys.argv
    sys.argv = [str(DEPLOY / DRIVER), *argv]
    try:
        runpy.run_path(str(DEPLOY / DRIVER), run_name="__main__")
    finally:
        sys.argv = saved
    raise AssertionError("deploy/driver.py returned instead of exiting with the command's status")


def reference_options() -> dict[str, set[str]]:
    """The options an end-to-end test runs, per job: the cluster test's, and the date-driven tests' of
    :data:`DATE_TESTED` (each of which must be a string in that test function's source)."""
    options = {job: {_option(a) for a in args if a.startswith("--")} for job, args in CLUSTER_TESTED.items()}
    for job, (path, name, flags) in DATE_TESTED.items():
        tree = ast.parse((REPO / path).read_text())
        test = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
        assert test is not None, f"{path}: no {name} (DATE_TESTED names the test that runs {job} by date)"
        strings = {n.value for n in ast.walk(test) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert flags <= strings, f"{path}::{name} no longer passes {sorted(flags - strings)}"
        options[job] |= flags
    return options


def _flags(argv: list[str]) -> list[tuple[str, str]]:
    """(flag, value) of ``--flag value`` and ``--flag=value`` in a command."""
    pairs = []
    for i, arg in enumerate(argv):
        if arg.startswith("--") and "=" in arg:
            pairs.append(tuple(arg.split("=", 1)))
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            pairs.append((arg, argv[i + 1]))
    return pairs


def _option(arg: str) -> str:
    return arg.split("=", 1)[0]


def all_commands() -> dict[str, list[list[str]]]:
    """Every platform's commands, rendered with :data:`RUN_DATE`."""
    ds, run_date = PLACEHOLDERS["airflow"], PLACEHOLDERS["databricks"]
    return {
        "emr": render(emr_commands(), ds),
        "emr-serverless": render(serverless_commands(), ds),
        "databricks": render(databricks_commands(databricks_job()), run_date),
        "databricks-bundle": render(databricks_commands(bundle_job()), run_date),
        "airflow": render(airflow_commands(), ds),
    }


@pytest.mark.parametrize("platform", ["emr", "emr-serverless", "databricks", "databricks-bundle", "airflow"])
def test_deploy_commands_are_accepted_by_the_jobs(platform, monkeypatch):
    commands = all_commands()[platform]
    assert [argv[0] for argv in commands] == JOBS
    for argv in commands:
        assert not any("{{" in a for a in argv), f"{platform}: a placeholder left in {argv}"
        dates = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--date"]
        assert dates == [RUN_DATE], f"{platform}: {argv} is not driven by the run date (--date)"
        # On EMR the driver is the application: run the commands through it.
        check_command(argv, monkeypatch, run=via_driver if platform.startswith("emr") else cli.main)


def test_every_platform_runs_the_same_commands():
    """One set of commands: the EMR steps, the EMR Serverless runs, the Databricks job, its bundle and the
    Airflow DAG differ in how they run them, not in what they run."""
    commands = all_commands()
    for platform, theirs in commands.items():
        assert theirs == commands["emr"], platform
    # ... and the three are one pipeline: train reads what ingest writes, score the model train writes.
    ingest, train, score = (dict(_flags(argv)) for argv in commands["emr"])
    assert ingest["--output"] == train["--events"] == score["--events"]
    assert score["--model"] == f"{train['--output']}/model"
    assert airflow_steps() == json.loads((DEPLOY / "emr/steps-api.json").read_text())  # the DAG's STEPS
    assert bundle_job() == databricks_job()


def test_the_cli_steps_are_the_api_steps():
    """deploy/emr/steps.json (``aws emr add-steps``) is deploy/emr/cli_steps.py's output from steps-api.json."""
    spec = importlib.util.spec_from_file_location("cli_steps", DEPLOY / "emr/cli_steps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    api = json.loads((DEPLOY / "emr/steps-api.json").read_text())
    assert (DEPLOY / "emr/steps.json").read_text() == module.render(api), (
        "deploy/emr/steps.json is stale: python deploy/emr/cli_steps.py > deploy/emr/steps.json"
    )
    assert [s["Args"] for s in json.loads((DEPLOY / "emr/steps.json").read_text())] == [
        s["HadoopJarStep"]["Args"] for s in api
    ]


def test_spark_submit_examples_run(monkeypatch):
    """Each example of spark-submit.sh's header: its --dry-run succeeds, and the job's arguments in the
    command it would run are accepted by the job."""
    env = {k: v for k, v in os.environ.items() if k not in ("SPARK_LOCAL_IP", "SPARK_MASTER", "PYSPARK_PYTHON")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # spark-submit beside python
    for example in spark_submit_examples():
        out = subprocess.run(
            ["bash", str(REPO / "spark-submit.sh"), "--dry-run", *example],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        assert out.returncode == 0, f"{example}: {out.stderr}"
        command = shlex.split(out.stdout.splitlines()[-1])
        app = next(i for i, a in enumerate(command) if a.endswith(".py"))
        job = Path(command[app]).stem
        check_command([job, *command[app + 1 :]], monkeypatch, tested=False)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuchjob"], "no subcommand 'nosuchjob'"),
        (["ingest", "--input", "s3://b/logs/*", "--output=s3://b/events"], "refuses"),  # the old example
        (["ingest", "--inputs=s3://b/logs/*", "--ouput=s3://b/events"], "ouput"),
        (["train", *CLUSTER_TESTED["train"], "--epoch", "5"], "refuses"),
        (["score", "--date", "2026-13-01", "--model=m"], "refuses"),
        (["train", *CLUSTER_TESTED["train"], "--warm-start", "s3://b/old/model"], "run by no end-to-end test"),
    ],
)
def test_check_command_refuses_bad_commands(argv, message, monkeypatch):
    """The checker is not a formality: a missing subcommand, a misspelt setting or flag, a bad date, an
    option no end-to-end test runs fail, through the driver too."""
    for run in (cli.main, via_driver):
        with pytest.raises((pytest.fail.Exception, AssertionError)) as info:
            check_command(argv, monkeypatch, run=run)
        assert message in str(info.value)


def test_airflow_commands_are_found_wherever_the_dag_holds_them(tmp_path):
    """A command added to the DAG outside STEPS is still checked (and one with a typo is caught)."""
    dag = (DEPLOY / "airflow/ipinsights_dag.py").read_text()
    extra = '\nEXTRA = ["spark-submit", "s3://b/driver.py", "score", "--date", "{{ ds }}", "--modle=m"]\n'
    (tmp_path / "dag.py").write_text(dag + extra)
    commands = airflow_commands(tmp_path / "dag.py")
    assert len(commands) == 4 and commands[-1] == ["score", "--date", "{{ ds }}", "--modle=m"]


def test_deploy_files_parse():
    """The shell scripts are valid bash; the Databricks wheel is the project's current version."""
    for script in sorted(DEPLOY.rglob("*.sh")):
        subprocess.run(["bash", "-n", str(script)], check=True)
    version: dict[str, str] = {}
    exec((REPO / "ipinsights/_version.py").read_text(), version)
    for job in (databricks_job(), bundle_job()):
        wheels = {lib["whl"].rsplit("/", 1)[-1] for task in job["tasks"] for lib in task.get("libraries", [])}
        assert wheels == {f"ipinsights-{version['__version__']}-py3-none-any.whl"}


# The bootstrap and init scripts, with the cloud's commands replaced by ones that log what they are asked.

FAKES = {
    "sudo": 'exec "$@"',
    "dnf": 'echo "dnf $*" >> "$FAKE_LOG"',
    # aws s3 cp --recursive SRC DST ...: the "bucket" is a local folder here
    "aws": 'cp "$4"/* "$5"/ 2>/dev/null || true',
    "python3.11": 'echo "python $*" >> "$FAKE_LOG"',
    "pip": 'echo "pip $*" >> "$FAKE_LOG"',
}


def run_script(script: str, args: list[str], wheels: list[str], tmp_path: Path) -> tuple[int, list[str], str]:
    """(exit status, the commands it ran, stderr) of a deploy script with ``wheels`` in its wheels folder."""
    bin_dir, folder, log = tmp_path / "bin", tmp_path / "wheels", tmp_path / "log"
    for path in (bin_dir, folder):
        path.mkdir(exist_ok=True)
    for name in os.listdir(folder):
        (folder / name).unlink()
    for name in wheels:
        (folder / name).write_bytes(b"")
    for name, body in FAKES.items():
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    log.write_text("")
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_LOG": str(log),
        "IPINSIGHTS_WHEELS": str(folder),
        "IPINSIGHTS_PIP": str(bin_dir / "pip"),
    }
    argv = [a.replace("WHEELS", str(folder)) for a in args]
    out = subprocess.run(["bash", str(DEPLOY / script), *argv], env=env, capture_output=True, text=True)
    return out.returncode, log.read_text().splitlines(), out.stderr


PROJECT_WHEEL = "ipinsights-0.1.0-py3-none-any.whl"
HOROVOD_WHEEL = "horovod-0.28.1-cp311-cp311-linux_x86_64.whl"


def test_emr_bootstrap_installs_the_wheel_with_its_extras_and_horovod_only_when_given(tmp_path):
    rc, ran, err = run_script("emr/bootstrap.sh", ["WHEELS"], [PROJECT_WHEEL], tmp_path)
    assert rc == 0, err
    installs = [line for line in ran if line.startswith("python -m pip install")]
    assert any(line.endswith(f"/{PROJECT_WHEEL}[spark]") for line in installs), ran
    assert not any("horovod" in line for line in installs) and "torch backend only" in err
    rc, ran, err = run_script("emr/bootstrap.sh", ["WHEELS"], [PROJECT_WHEEL, HOROVOD_WHEEL], tmp_path)
    assert rc == 0 and any(HOROVOD_WHEEL in line for line in ran), (ran, err)
    rc, _, err = run_script("emr/bootstrap.sh", ["WHEELS"], [], tmp_path)
    assert rc == 1 and "expected one ipinsights-*.whl" in err


def test_databricks_init_installs_horovod_only_when_given(tmp_path):
    rc, ran, err = run_script("databricks/init.sh", [], [], tmp_path)
    assert rc == 0, err
    assert [line.split()[3] for line in ran] == ["torch==2.13.0"] and "torch backend only" in err
    rc, ran, err = run_script("databricks/init.sh", [], [HOROVOD_WHEEL], tmp_path)
    assert rc == 0 and any(HOROVOD_WHEEL in line for line in ran), (ran, err)
    assert not any("pyspark" in line for line in ran)  # the runtime's Spark stays the only one
