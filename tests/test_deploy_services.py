"""deploy/ is valid for the services, checked offline against their own published models.

- EMR on EC2 steps (deploy/emr/steps-api.json, and the Airflow DAG's, which are the same): botocore's model
  of ``emr`` ``AddJobFlowSteps`` and its parameter validator, as boto3 would check them before sending.
- EMR Serverless runs (deploy/emr-serverless/JOB.json): ``emr-serverless`` ``StartJobRun`` the same way;
  the wheel travels in a packed virtualenv (``spark.archives``) that the driver and executors run.
- The Databricks job (deploy/databricks/job.json) and the bundle's (databricks.yml): the Databricks SDK's
  ``jobs.JobSettings``, which must give the whole definition back (a field it does not know is dropped,
  and fails); a schedule, dedicated job clusters and ``python_wheel_task``s of the wheel.

botocore ships its service models and the SDK its dataclasses: no credentials, no network. What the
commands themselves say is tests/test_deploy.py's.
"""

from __future__ import annotations

import json
import re
import shlex
import uuid
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from databricks.sdk.service import jobs
from databricks.sdk.service.compute import DataSecurityMode
from test_deploy import DEPLOY, PLACEHOLDERS, bundle_job, databricks_job, render, serverless_requests

DS = PLACEHOLDERS["airflow"]
ACTIONS = ["TERMINATE_JOB_FLOW", "TERMINATE_CLUSTER", "CANCEL_AND_WAIT", "CONTINUE"]
DATE = "2026-01-09"


def operation_input(service: str, operation: str):
    """The input shape of a service's operation, from the model botocore ships."""
    model = botocore.session.get_session().get_service_model(service)
    return model.operation_model(operation).input_shape


def service_errors(service: str, operation: str, params: dict[str, Any]) -> list[str]:
    """What boto3 would refuse in ``params`` before sending them (botocore's parameter validator), and the
    values outside the model's enums and patterns (which only the service checks: found here instead)."""
    shape = operation_input(service, operation)
    params = dict(params)
    for name, member in shape.members.items():  # botocore fills idempotency tokens itself (clientToken)
        if member.metadata.get("idempotencyToken") and name not in params:
            params[name] = str(uuid.uuid4())
    report = ParamValidator().validate(params, shape)
    errors = report.generate_report().splitlines() if report.has_errors() else []
    return errors + _pattern_errors(shape, params, operation)


def _pattern_errors(shape, value: Any, where: str) -> list[str]:
    if shape.type_name == "structure" and isinstance(value, dict):
        return [
            e
            for k, v in value.items()
            if k in shape.members
            for e in _pattern_errors(shape.members[k], v, f"{where}.{k}")
        ]
    if shape.type_name == "list" and isinstance(value, list):
        return [e for i, v in enumerate(value) for e in _pattern_errors(shape.member, v, f"{where}[{i}]")]
    if shape.type_name == "map" and isinstance(value, dict):
        return [e for k, v in value.items() for e in _pattern_errors(shape.value, v, f"{where}[{k}]")]
    if shape.type_name == "string" and getattr(shape, "enum", None) and value not in shape.enum:
        return [f"{where}: {value!r} is not one of {shape.enum}"]
    pattern = _compiled(shape.metadata.get("pattern"))
    if shape.type_name == "string" and isinstance(value, str) and pattern and not pattern.search(value):
        return [f"{where}: {value!r} does not match the model's pattern {pattern.pattern!r}"]
    return []


def _compiled(pattern: str | None) -> re.Pattern[str] | None:
    """A model's pattern (not anchored: ECMA 262 semantics) in Python's dialect; None where there is none or
    it is Java's own (UTF-16 surrogate ranges such as ``\\uD800\\uDC00-\\uDBFF\\uDFFF``: EMR's "any XML
    text", which every value here is)."""
    try:
        return re.compile(pattern) if pattern else None
    except re.error:
        return None


def api_steps() -> list[dict[str, Any]]:
    return json.loads((DEPLOY / "emr/steps-api.json").read_text())


# EMR on EC2


def test_emr_steps_are_valid_add_job_flow_steps():
    """What boto3's ``emr.add_job_flow_steps(JobFlowId=..., Steps=...)`` and Airflow's
    ``EmrAddStepsOperator(steps=...)`` take, rendered as they render it."""
    for steps in (api_steps(), render(api_steps(), DS, DATE)):
        assert service_errors("emr", "AddJobFlowSteps", {"JobFlowId": "j-2AXXXXXXGAPLF", "Steps": steps}) == []


def test_the_validator_refuses_the_cli_shape():
    """The check can fail: the CLI's flattened steps (today's steps.json shape) are not the API's."""
    cli = json.loads((DEPLOY / "emr/steps.json").read_text())
    errors = service_errors("emr", "AddJobFlowSteps", {"JobFlowId": "j-2AXXXXXXGAPLF", "Steps": cli})
    assert 'Missing required parameter in Steps[0]: "HadoopJarStep"' in errors
    assert any('Unknown parameter in Steps[0]: "Jar"' in e for e in errors)
    bad = [{**api_steps()[0], "ActionOnFailure": "CANCEL"}]
    errors = service_errors("emr", "AddJobFlowSteps", {"JobFlowId": "j-1", "Steps": bad})
    assert errors == [f"AddJobFlowSteps.Steps[0].ActionOnFailure: 'CANCEL' is not one of {ACTIONS}"]


# EMR Serverless


def test_emr_serverless_runs_are_valid_start_job_run():
    for job, request in serverless_requests().items():
        for params in (request, render(request, DS, DATE)):
            assert service_errors("emr-serverless", "StartJobRun", params) == [], job


def test_the_validator_refuses_a_bad_start_job_run():
    request = serverless_requests()["score"]
    errors = service_errors("emr-serverless", "StartJobRun", {**request, "applicationId": ""})
    assert any("Invalid length for parameter applicationId" in e for e in errors)
    errors = service_errors("emr-serverless", "StartJobRun", {**request, "executionRoleArn": "ipinsights-emr-role"})
    assert any("executionRoleArn" in e and "pattern" in e for e in errors)
    driver = {"sparkSubmit": {**request["jobDriver"]["sparkSubmit"], "entrypoint": "x.py"}}
    errors = service_errors("emr-serverless", "StartJobRun", {**request, "jobDriver": driver})
    assert any('Unknown parameter in jobDriver.sparkSubmit: "entrypoint"' in e for e in errors)


def test_emr_serverless_runs_the_packed_virtualenv():
    """Driver and executors run the Python of the archive the Dockerfile packs (where the wheel is), unpacked
    as ./environment; the three runs share the application, role, driver and environment."""
    dockerfile = (DEPLOY / "emr-serverless/Dockerfile").read_text()
    packed = re.search(r"venv-pack -o /out/(\S+) --python-prefix /home/hadoop/(\S+)", dockerfile)
    assert packed, "the Dockerfile packs no virtualenv with venv-pack"
    archive, folder = packed.groups()
    python = f"./{folder}/bin/python"
    shared = set()
    for job, request in serverless_requests().items():
        submit = request["jobDriver"]["sparkSubmit"]
        words = shlex.split(submit["sparkSubmitParameters"])
        assert words[::2] == ["--conf"] * (len(words) // 2), f"{job}: only --conf k=v pairs"
        conf = dict(w.split("=", 1) for w in words[1::2])
        assert conf["spark.archives"].endswith(f"/{archive}#{folder}"), job
        for key in (
            "spark.emr-serverless.driverEnv.PYSPARK_DRIVER_PYTHON",
            "spark.emr-serverless.driverEnv.PYSPARK_PYTHON",
            "spark.executorEnv.PYSPARK_PYTHON",
        ):
            assert conf[key] == python, (job, key)
        shared.add(
            (request["applicationId"], request["executionRoleArn"], submit["entryPoint"], conf["spark.archives"])
        )
    assert len(shared) == 1


# Databricks


def sdk_round_trip(job: dict[str, Any]) -> None:
    """Fail unless the SDK's ``JobSettings`` reads the whole job and gives it back unchanged."""
    settings = jobs.JobSettings.from_dict(job)
    back = settings.as_dict()
    lost = _diff(job, back)
    assert not lost, f"the Databricks SDK's JobSettings does not keep: {lost}"


def _diff(a: Any, b: Any, where: str = "job") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [e for k in a.keys() | b.keys() for e in _diff(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [e for i, (x, y) in enumerate(zip(a, b, strict=True)) for e in _diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} -> {b!r}"]


@pytest.mark.parametrize("load", [databricks_job, bundle_job], ids=["job.json", "databricks.yml"])
def test_databricks_job_is_a_valid_jobs_api_job(load):
    job = load()
    sdk_round_trip(job)
    settings = jobs.JobSettings.from_dict(job)
    schedule = settings.schedule
    assert schedule is not None and schedule.quartz_cron_expression and schedule.timezone_id, "no schedule"
    # One run date for the whole run, from the start time (tests/test_deploy.py checks each task uses it).
    assert [(p.name, p.default) for p in settings.parameters or []] == [("run_date", "{{job.start_time.iso_date}}")]
    dedicated = {DataSecurityMode.SINGLE_USER, DataSecurityMode.DATA_SECURITY_MODE_DEDICATED}
    for cluster in settings.job_clusters or []:
        assert cluster.new_cluster is not None and cluster.new_cluster.data_security_mode in dedicated, (
            f"{cluster.job_cluster_key}: the jobs use the SparkContext: a dedicated (SINGLE_USER) cluster"
        )
    keys = {c.job_cluster_key for c in settings.job_clusters or []}
    for task in settings.tasks or []:
        assert task.job_cluster_key in keys, task.task_key
        wheel = task.python_wheel_task
        assert wheel is not None, f"{task.task_key}: not a python_wheel_task of the wheel"
        assert (wheel.package_name, wheel.entry_point) == ("ipinsights", "ipinsights"), task.task_key
        assert all(isinstance(p, str) for p in wheel.parameters or []), task.task_key  # the API takes strings
        assert [lib.whl for lib in task.libraries or []], f"{task.task_key}: the wheel is not its library"


def test_the_round_trip_fails_on_a_field_the_sdk_does_not_know():
    job = databricks_job()
    with pytest.raises(AssertionError, match=r"job\.tasks\[0\]\.python_wheel_tsk"):
        sdk_round_trip({**job, "tasks": [{**job["tasks"][0], "python_wheel_tsk": {}}, *job["tasks"][1:]]})
    with pytest.raises(AssertionError, match=r"job\.max_concurent_runs"):
        sdk_round_trip({**job, "max_concurent_runs": 1})
