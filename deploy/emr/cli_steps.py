"""Write deploy/emr/steps.json (the AWS CLI's shape) from deploy/emr/steps-api.json (the API's shape).

    python deploy/emr/cli_steps.py > deploy/emr/steps.json

steps-api.json is the one source: what boto3's ``emr.add_job_flow_steps(Steps=...)`` and Airflow's
``EmrAddStepsOperator(steps=...)`` take (``HadoopJarStep: {Jar, Args}``). ``aws emr add-steps --steps
file://...`` takes the same steps flattened (``Type: CUSTOM_JAR``, ``Jar`` and ``Args`` at the top);
tests/test_deploy.py fails when steps.json is not this script's output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

API_STEPS = Path(__file__).with_name("steps-api.json")


def cli_steps(api_steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The CLI's ``--steps`` list for API ``StepConfig``s (a custom JAR step each: command-runner.jar)."""
    out = []
    for step in api_steps:
        jar_step = step["HadoopJarStep"]
        unknown = set(jar_step) - {"Jar", "Args"}
        if unknown:  # Properties and MainClass have CLI spellings of their own: not needed here
            raise ValueError(f"step {step['Name']!r}: no CLI form written for {sorted(unknown)}")
        cli = {"Type": "CUSTOM_JAR", "Name": step["Name"], "ActionOnFailure": step["ActionOnFailure"]}
        out.append({**cli, "Jar": jar_step["Jar"], "Args": jar_step["Args"]})
    return out


def render(api_steps: list[dict[str, Any]]) -> str:
    """steps.json's text."""
    return json.dumps(cli_steps(api_steps), indent=2) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render(json.loads(API_STEPS.read_text())))
