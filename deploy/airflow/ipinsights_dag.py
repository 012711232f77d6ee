"""Airflow DAG: the daily pipeline (ingest -> train -> score) as EMR steps, all three on one run date.

Copy this file into the DAGs folder (with the Amazon provider installed: ``apache-airflow-providers-amazon``)
and set the Airflow variable ``ipinsights_emr_cluster_id`` to a running cluster started with
deploy/emr/bootstrap.sh. Each run adds one step at a time and waits for it, so a failure stops the chain
and Airflow's retries rerun only the step that failed (each job replaces its own output: reruns are safe).

Why ``EmrAddStepsOperator`` (and not ``SparkSubmitOperator`` or ``BashOperator``): the steps are the API
shape that boto3 takes, the same as deploy/emr/steps-api.json (tests/test_deploy.py checks that they are
identical), so the Spark options live in one place; spark-submit runs on the cluster, where the wheel is
installed, and Airflow's workers need neither Spark nor the project. The run date is ``{{ ds }}``: a
``@daily`` run starts when its day has ended and processes that day (ingests and scores it; trains on the
days before it). Airflow renders ``{{ ds }}`` in ``steps`` (a templated field).

tests/test_deploy.py reads this file without Airflow: it parses it, takes every spark-submit command in it,
renders ``{{ ds }}`` and runs each through the ``ipinsights`` parser.
"""

from __future__ import annotations

import pendulum

try:  # Airflow 3
    from airflow.sdk import DAG
except ImportError:  # Airflow 2.4+
    from airflow import DAG
from airflow.providers.amazon.aws.operators.emr import EmrAddStepsOperator

CLUSTER_ID = "{{ var.value.ipinsights_emr_cluster_id }}"

#: = deploy/emr/steps-api.json
STEPS = [
    {
        "Name": "ipinsights ingest {{ ds }}",
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                "spark-submit", "--deploy-mode", "cluster",
                "--conf", "spark.pyspark.python=python3.11", "--conf", "spark.pyspark.driver.python=python3.11",
                "s3://my-bucket/ipinsights/driver.py",
                "ingest", "--date", "{{ ds }}",
                "--inputs=s3://my-bucket/logs/{date:%Y/%m/%d}/*.gz",
                "--output=s3://my-bucket/ipinsights/events",
                "--engine=arrow",
            ],
        },
    },
    {
        "Name": "ipinsights train {{ ds }}",
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                "spark-submit", "--deploy-mode", "cluster",
                "--conf", "spark.pyspark.python=python3.11", "--conf", "spark.pyspark.driver.python=python3.11",
                "s3://my-bucket/ipinsights/driver.py",
                "train", "--events", "s3://my-bucket/ipinsights/events", "--date", "{{ ds }}",
                "--output", "s3://my-bucket/ipinsights/runs/{{ ds }}",
                "--backend", "torch", "--num-workers", "2", "--epochs=5",
            ],
        },
    },
    {
        "Name": "ipinsights score {{ ds }}",
        "ActionOnFailure": "CONTINUE",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [
                "spark-submit", "--deploy-mode", "cluster",
                "--conf", "spark.pyspark.python=python3.11", "--conf", "spark.pyspark.driver.python=python3.11",
                "s3://my-bucket/ipinsights/driver.py",
                "score", "--date", "{{ ds }}", "--model", "s3://my-bucket/ipinsights/runs/{{ ds }}/model",
                "--target-fpr", "0.01",
                "--events=s3://my-bucket/ipinsights/events",
                "--scores=s3://my-bucket/ipinsights/scores",
                "--flagged=s3://my-bucket/ipinsights/flagged",
                "--reports=s3://my-bucket/ipinsights/reports",
            ],
        },
    },
]  # fmt: skip

with DAG(
    dag_id="ipinsights_daily",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,  # one day at a time: a day's training reads the days before it
    default_args={"retries": 1, "retry_delay": pendulum.duration(minutes=10)},
    tags=["ipinsights"],
) as dag:
    previous = None
    for step in STEPS:
        # One task per step that adds it and waits for it: a retry adds the step again. With a triggerer
        # running, deferrable=True frees the worker slot while the step runs.
        task = EmrAddStepsOperator(
            task_id=step["Name"].split()[1],
            job_flow_id=CLUSTER_ID,
            steps=[step],
            wait_for_completion=True,
            waiter_delay=60,
            waiter_max_attempts=240,  # 4 hours
        )
        if previous is not None:
            previous >> task
        previous = task
