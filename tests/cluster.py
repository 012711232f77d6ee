"""A Spark standalone cluster on loopback for tests: one master and workers, each its own process group.

Started with pyspark's own launcher (``$SPARK_HOME/bin/spark-class``, ``SPARK_HOME`` = the installed pyspark
package), so jobs submitted to ``cluster.master_url`` run as they would on a real cluster: a driver in the
submitting process, executors in separate JVMs with their own Python workers and working directories.

    with StandaloneCluster(tmp_path, workers=2) as cluster:
        subprocess.run(["./spark-submit.sh", "--master", cluster.master_url, "ingest", ...])

The ``spark_cluster`` fixture gives one per test session. Executors get 1 GiB unless the application sets
``spark.executor.memory``. Stopping kills each daemon's whole process group (its executors included).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from servers import free_port

__all__ = [
    "BUCKET",
    "JARS",
    "JAR_DIR",
    "Bucket",
    "StandaloneCluster",
    "Submitter",
    "ingest_args",
    "kill_group",
    "last_json",
    "prepare_lake",
    "s3_server",
    "s3a_spark_conf",
    "score_args",
    "spark_cluster",
    "spark_home",
    "tail",
    "train_args",
]

REPO = Path(__file__).resolve().parents[1]
#: Hadoop's S3A connector for Spark's side (``scripts/fetch_s3a_jars.sh``): pyspark's package has none.
JAR_DIR = Path(os.environ.get("IPINSIGHTS_S3A_JARS", Path.home() / ".cache/ipinsights/s3a-jars"))
JARS = [JAR_DIR / "hadoop-aws-3.3.1.jar", JAR_DIR / "aws-java-sdk-bundle-1.11.901.jar"]
BUCKET = "lake"
#: A small data set: 200 users over 4 days (about 30k log lines): 2 training days, 1 validation, 1 test.
GENERATE = [
    "--users=200",
    "--days=4",
    "--train_days=2",
    "--validation_days=1",
    "--n_files=2",
    "--attacks=200",
    "--validation_attacks=100",
    "--seed=0",
]
STEP_TIMEOUT = 600  # seconds for any one job
#: The first and last day of the training, validation and test days, as ``SynthSpec.split_dates`` gives them.
Dates = dict[str, tuple[str, str]]


def spark_home() -> Path:
    """The installed pyspark package folder: it carries ``bin/spark-class`` and Spark's jars."""
    import pyspark

    return Path(pyspark.__file__).resolve().parent


class StandaloneCluster:
    """A master and ``workers`` workers (``cores``, ``memory`` each) on 127.0.0.1; logs, work dirs under ``root``."""

    def __init__(
        self,
        root: str | Path,
        *,
        workers: int = 2,
        cores: int = 1,
        memory: str = "3g",
        executor_memory: str = "1g",
        start_timeout: float = 120.0,
    ) -> None:
        self.root = Path(root)
        self.n_workers = workers
        self.cores = cores
        self.memory = memory
        self.executor_memory = executor_memory
        self.start_timeout = start_timeout
        self.port = free_port()
        self.webui_port = free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.webui_url = f"http://127.0.0.1:{self.webui_port}"
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def env(self) -> dict[str, str]:
        """The daemons' environment: loopback only, pyspark's Spark, 1 GiB executors by default."""
        return {
            **os.environ,
            "SPARK_HOME": str(spark_home()),
            "SPARK_LOCAL_IP": "127.0.0.1",
            # Read by SparkContext when the application does not set spark.executor.memory.
            "SPARK_EXECUTOR_MEMORY": self.executor_memory,
            # Daemons must not pick up a conf dir of the machine's own Spark install.
            "SPARK_CONF_DIR": str(self.root / "conf"),
        }

    def _start(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        log_path = self.root / f"{name}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [str(spark_home() / "bin" / "spark-class"), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self.env(), **(extra_env or {})},
                cwd=self.root,
                start_new_session=True,  # its own process group: stop() kills the daemon and its executors
            )
        self.procs.append((name, proc))
        return proc

    def __enter__(self) -> StandaloneCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the master, wait until it listens, start the workers, wait until all are ALIVE."""
        (self.root / "conf").mkdir(parents=True, exist_ok=True)
        self._start(
            "master",
            [
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--webui-port",
                str(self.webui_port),
            ],
        )
        self._wait(lambda: self._listening(self.port), "the master to listen")
        for i in range(self.n_workers):
            work_dir = self.root / f"worker-{i}"
            work_dir.mkdir(parents=True, exist_ok=True)
            self._start(
                f"worker-{i}",
                [
                    "org.apache.spark.deploy.worker.Worker",
                    "--host",
                    "127.0.0.1",
                    "--cores",
                    str(self.cores),
                    "--memory",
                    self.memory,
                    "--webui-port",
                    str(free_port()),
                    self.master_url,
                ],
                {"SPARK_WORKER_DIR": str(work_dir)},
            )
        self._wait(lambda: len(self.alive_workers()) >= self.n_workers, f"{self.n_workers} workers to register")

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            if ready():
                return
            time.sleep(0.5)
        raise TimeoutError(f"waited {self.start_timeout:.0f} s for {what}:\n{self.logs()}")

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    def state(self) -> dict:
        """The master's web UI ``/json`` document (workers, applications), {} while it does not answer."""
        try:
            with urllib.request.urlopen(self.webui_url + "/json", timeout=5) as r:
                return json.loads(r.read())
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    def alive_workers(self) -> list[dict]:
        return [w for w in self.state().get("workers", []) if w.get("state") == "ALIVE"]

    def logs(self, tail: int = 3000) -> str:
        """The tail of every daemon's log, for failure messages."""
        parts = []
        for name, _ in self.procs:
            try:
                text = (self.root / f"{name}.log").read_text(errors="replace")
            except OSError:
                text = ""
            parts.append(f"--- {name} ---\n{text[-tail:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Kill every daemon's process group (workers first, so their executors go with them), then delete
        the jars each executor fetched (the S3A bundle: about 200 MB per application and executor); the
        executors' logs stay for a failure's post-mortem."""
        for _, proc in reversed(self.procs):
            _stop_daemon(proc)
        self.procs.clear()
        for jar in self.root.glob("worker-*/app-*/*/*.jar"):
            jar.unlink()


def _stop_daemon(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``proc``, give the leader ``grace`` seconds, then SIGKILL the group
    (children that outlive their leader, e.g. an executor's Python workers, go too)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(grace)


# The pipeline's command lines, shared by tests/test_cluster.py, bench/cluster_vs_local.py and (as the
# reference for deploy/) tests/test_deploy.py: a deployment runs exactly these jobs with these options.


def ingest_args(logs: str, events: str) -> list[str]:
    """``ingest``: every log file under ``logs`` into the events table ``events``; the ``arrow`` engine
    (pyarrow in the tasks: far fewer S3 requests than Hadoop's committer and renames)."""
    return [f"--inputs={logs}/*", f"--output={events}", "--engine=arrow"]


def train_args(events: str, run: str, dates: Dates, backend: str, epochs: int) -> list[str]:
    """``train``: the training days, validated on the validation days, into the run folder ``run``."""
    (t0, t1), (v0, v1) = dates["train"], dates["validation"]
    return [
        "--events",
        events,
        "--start-date",
        t0,
        "--end-date",
        t1,
        "--validation-start-date",
        v0,
        "--validation-end-date",
        v1,
        "--output",
        run,
        "--backend",
        backend,
        "--num-workers",
        "2",
        f"--epochs={epochs}",
    ]


def score_args(events: str, run: str, out: str, dates: Dates) -> list[str]:
    """``score``: the test days with ``run``'s model, calibrated on the validation days; tables and reports
    under ``out``."""
    (t0, t1), (v0, v1), (s0, s1) = dates["train"], dates["validation"], dates["test"]
    return [
        "--start-date",
        s0,
        "--end-date",
        s1,
        "--target-fpr",
        "0.01",
        f"--model={run}/model",
        f"--events={events}",
        f"--scores={out}/scores",
        f"--flagged={out}/flagged",
        f"--reports={out}/reports",
        f"--calibration_start_date={v0}",
        f"--calibration_end_date={v1}",
        f"--train_start_date={t0}",
        f"--train_end_date={t1}",
    ]


# Jobs against S3: ./spark-submit.sh in its own process, Spark through S3A, Python through pyarrow.


def s3a_settings(endpoint: str) -> dict[str, str]:
    """Hadoop S3A settings for a local S3 API with static credentials (the jars are hadoop-aws 3.3.1)."""
    settings = {
        "endpoint": endpoint,
        "access.key": "k",
        "secret.key": "s",
        "path.style.access": "true",
        "connection.ssl.enabled": "false",
        # Hadoop 3.5's defaults name SDK v2 credential providers, which hadoop-aws 3.3.1 does not have.
        "aws.credentials.provider": "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider",
        # Hadoop 3.5 writes these defaults with units ("60s"); hadoop-aws 3.3.1 parses plain numbers.
        "threads.keepalivetime": "60",
        "multipart.purge.age": "86400",
        "connection.establish.timeout": "5000",
        "connection.timeout": "200000",
        "attempts.maximum": "2",
        "retry.limit": "2",
    }
    return {f"spark.hadoop.fs.s3a.{k}": v for k, v in settings.items()}


def s3a_spark_conf(endpoint: str) -> dict[str, str]:
    """Every Spark setting a test job needs to reach the local S3 API through S3A: :func:`s3a_settings`, and the
    jars on the driver's and the executors' class path, as a cluster with S3A installed has them (EMR,
    Databricks). Not ``spark.jars``: that ships the 200 MB SDK bundle to every executor of every application."""
    classpath = ":".join(map(str, JARS))
    return {
        **s3a_settings(endpoint),
        "spark.driver.extraClassPath": classpath,
        "spark.executor.extraClassPath": classpath,
        "spark.ui.enabled": "false",
        # S3 has no rename: Hadoop's committer copies each file at task commit and again at job commit
        # (algorithm 1); 2 copies it once, at task commit. (EMR's and Databricks' S3 committers copy none.)
        "spark.hadoop.mapreduce.fileoutputcommitter.algorithm.version": "2",
    }


def aws_env(endpoint: str) -> dict[str, str]:
    """What pyarrow (and boto3) read: the endpoint of the local S3 API and its static credentials."""
    return {
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@dataclass
class Submitter:
    """Runs ``./spark-submit.sh --master MASTER JOB ...`` in ``cwd`` with S3 reachable from every side."""

    master: str
    endpoint: str
    cwd: Path
    log_dir: Path
    timeout: float = STEP_TIMEOUT

    def command(self, job: str, args: list[str]) -> list[str]:
        conf = {
            **s3a_spark_conf(self.endpoint),
            # The executors' Python (ingest's tasks, the training ranks) reads S3 with pyarrow as the driver does.
            **{f"spark.executorEnv.{k}": v for k, v in aws_env(self.endpoint).items()},
            "spark.sql.shuffle.partitions": "4",
        }
        opts = [f"--conf={k}={v}" for k, v in conf.items()]
        return [
            str(REPO / "spark-submit.sh"),
            "--master",
            self.master,
            *(a for o in opts for a in ("--spark-opt", o)),
            job,
            *args,
        ]

    def env(self) -> dict[str, str]:
        # SPARK_LOCAL_IP explicitly: spark-submit.sh's default is not this test's business.
        return {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **aws_env(self.endpoint)}

    def start(self, job: str, args: list[str], name: str) -> tuple[subprocess.Popen, Path]:
        """Start a job in its own process group (so that it can be killed whole). Its stdout goes to
        ``LOG_DIR/NAME.out`` and its stderr to ``LOG_DIR/NAME.log``, the path returned. Under spark-submit
        the Python driver's stderr (our log, a traceback) joins its stdout; the JVM's log is on stderr."""
        log_path = self.log_dir / f"{name}.log"
        with open(log_path.with_suffix(".out"), "wb") as out, open(log_path, "wb") as log:
            proc = subprocess.Popen(
                self.command(job, args),
                cwd=self.cwd,
                env=self.env(),
                stdout=out,
                stderr=log,
                start_new_session=True,
            )
        return proc, log_path

    def run(self, job: str, args: list[str], name: str | None = None) -> str:
        """Run a job to its end; its stdout, or an AssertionError with the tail of its log."""
        proc, log_path = self.start(job, args, name or job)
        try:
            rc = proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            raise AssertionError(f"{name or job} ran over {self.timeout} s:\n{tail(log_path)}") from None
        assert rc == 0, f"{name or job} exited with {rc}:\n{tail(log_path)}"
        return log_path.with_suffix(".out").read_text(errors="replace")


def tail(log_path: Path, n: int = 4000) -> str:
    """The end of a job's stdout (the Python driver: our log, a traceback) and of its stderr (the JVM)."""
    out = log_path.with_suffix(".out")
    return "\n".join(
        f"--- {p.name} (last {n} characters) ---\n{p.read_text(errors='replace')[-n:]}"
        for p in (out, log_path)
        if p.exists()
    )


def last_json(out: str) -> dict:
    """The last JSON object a job printed (on a line of its own start), among the log lines around it."""
    decoder = json.JSONDecoder()
    starts = [i for i in range(len(out)) if out[i] == "{" and (i == 0 or out[i - 1] == "\n")]
    for i in reversed(starts):
        try:
            return decoder.raw_decode(out, i)[0]
        except ValueError:
            continue
    raise AssertionError(f"no JSON object in the job's output:\n{out[-3000:]}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a job's whole process group (spark-submit's JVM and the Python driver under it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


class Bucket:
    """The test bucket through boto3 (what a user would see with ``aws s3 ls``)."""

    def __init__(self, endpoint: str, name: str = BUCKET) -> None:
        import boto3

        self.name = name
        self.s3 = boto3.client(
            "s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1"
        )
        self.s3.create_bucket(Bucket=name)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.name, Key=key)["Body"].read()

    def upload_tree(self, folder: Path, prefix: str) -> None:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                self.s3.upload_file(str(f), self.name, f"{prefix}/{f.relative_to(folder).as_posix()}")


def prepare_lake(submit: Submitter, bucket: Bucket, scratch: Path, events: str) -> Dates:
    """generate (into ``scratch``, in this process: the small set needs no Spark, and the generator writes
    local files only), upload the logs to s3://BUCKET/logs/, ingest them on the cluster into ``events``; the
    data set's training, validation and test days."""
    from ipinsights.synth import read_spec
    from ipinsights_jobs import generate

    synth = scratch / "synth"
    assert generate.main(["--output", str(synth), *GENERATE]) == 0
    bucket.upload_tree(synth / "logs", "logs")
    bucket.upload_tree(synth / "world", "world")  # its ip2asn tables: the model's AS and country levels
    out = submit.run("ingest", [*ingest_args(f"s3://{bucket.name}/logs", events), "--run_id=c1"])
    summary = last_json(out)
    assert summary["kept"] > 5_000 and summary["quarantined"] > 0, summary
    spec = read_spec(synth)
    return {split: spec.split_dates(split) for split in ("train", "validation", "test")}


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port); yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request would drown failure output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory) -> StandaloneCluster:
    """One standalone cluster (master + 2 workers of 1 core and 3 GiB) for the test session, always stopped."""
    pytest.importorskip("pyspark")
    with StandaloneCluster(tmp_path_factory.mktemp("spark-cluster")) as cluster:
        yield cluster
