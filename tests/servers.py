"""Helpers for tests and benchmarks of the endpoint: a small trained model and a real server process.

with ServerProcess(model_dir, workers=2) as server:
    urllib.request.urlopen(server.url + "/ping")
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["Client", "ServerProcess", "free_port", "train_toy_model"]


def train_toy_model(
    path: str | Path,
    *,
    n_entities: int = 100,
    events_per_entity: int = 60,
    vector_dim: int = 16,
    num_entity_vectors: int | None = None,
    epochs: int = 1,
    seed: int = 0,
) -> Path:
    """Train a small model on the toy world and save it (with entity stats) as ``ipinsights train`` does."""
    from toyworld import make_toy_world

    from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
    from ipinsights.core.entities import EntityStats
    from ipinsights.train.data import encode_pairs
    from ipinsights.train.trainer import train_model

    world = make_toy_world(n_entities=n_entities, events_per_entity=events_per_entity, n_test=200, seed=seed)
    hp = Hyperparameters(
        num_entity_vectors=num_entity_vectors or 2 * n_entities,
        vector_dim=vector_dim,
        epochs=epochs,
        mini_batch_size=500,
        learning_rate=0.01,
    )
    opts = ModelOptions()
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, opts.hash_seed)
    stats = EntityStats.from_entities(world.train["entity"], opts.hash_seed)
    topts = TrainOptions(seed=seed, num_threads=1, progress_bar="off")
    train_model(hp, opts, topts, train, model_dir=path, entity_stats=stats, manifest={"entities": len(stats)})
    return Path(path)


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m ipinsights_jobs.serve`` on a free loopback port, up (``/ping`` 200) on ``__enter__``.

    Output goes to a log file (a full pipe nobody reads would block the server). ``__exit__`` stops it
    with SIGTERM, then SIGKILL after ``stop_timeout`` seconds.
    """

    def __init__(
        self,
        model: str | Path,
        *,
        workers: int = 2,
        extra_args: tuple[str, ...] = (),
        log_path: str | Path | None = None,
        start_timeout: float = 90.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.model = Path(model)
        self.workers = workers
        self.extra_args = extra_args
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(log_path) if log_path else self.model.parent / f"serve-{self.port}.log"
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "ipinsights_jobs.serve",
            "--model",
            str(self.model),
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *self.extra_args,
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_ready(self) -> None:
        """Block until ``/ping`` answers 200, the process exits, or ``start_timeout`` passes."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if self.ping():
                # With several workers, the first one up answers: give the others until they are up too.
                # (One worker serves in the supervisor's own process: no children to wait for; waiting
                # for them spent the whole start_timeout.)
                while self.workers > 1 and time.monotonic() < deadline and len(self.worker_pids()) < self.workers:
                    time.sleep(0.1)
                return
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {self.start_timeout} s:\n{self.log()[-3000:]}")

    def ping(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/ping", timeout=timeout) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def worker_pids(self) -> set[int]:
        """PIDs of the supervisor's live worker processes (Linux /proc; empty with one in-process worker)."""
        if self.proc is None or self.workers < 2:
            return set()
        try:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return set()
        pids = set()
        for pid in children:
            try:  # multiprocessing's resource tracker is a child too: keep only the workers
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmdline:
                pids.add(int(pid))
        return pids

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(self.stop_timeout)


class Client:
    """A persistent HTTP/1.1 connection that reconnects once when the server closed it (e.g. after a 413)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.port = port
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        chunked: bool = False,
    ) -> tuple[int, dict[str, str], bytes]:
        """``(status, headers with lower-case names, body)``."""
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                if chunked:
                    self.conn.request(
                        method, path, body=iter([body or b""]), headers=headers or {}, encode_chunked=True
                    )
                else:
                    self.conn.request(method, path, body=body, headers=headers or {})
                r = self.conn.getresponse()
                data = r.read()
                if r.will_close:
                    self.close()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, data
            except (http.client.RemoteDisconnected, ConnectionError, BrokenPipeError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
