"""Endpoint latency under a fixed request rate, and batch throughput, against the in-process Scorer.

Starts ``ipinsights serve`` on a free loopback port (or uses ``--url``), then:

1. open-loop load: ``--rate`` single-record ``text/csv`` requests per second for ``--seconds``, sent at
   fixed scheduled times over a few keep-alive connections by an asyncio client (raw HTTP/1.1, no
   client library overhead). Latency runs from the *scheduled* send time, so a stalled server is
   charged for the requests queued behind the stall (no coordinated omission);
2. closed-loop batches: 1,000-record CSV bodies on one connection per worker for ``--batch-seconds``;
3. baseline: ``Scorer.dot_product`` on one record in this process (one torch thread).

Prints one figure per line (``name=value``). The machine is shared: compare the ratio, run it twice.

    python bench/serve_latency.py [--model DIR] [--seconds 30] [--rate 500] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np


class Conn:
    """One keep-alive HTTP/1.1 connection speaking just enough of the protocol for this benchmark."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, path: str, body: bytes, content_type: str = "text/csv") -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        assert self.reader is not None
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers[9:12])
        length = 0
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def open_loop(
    host: str,
    port: int,
    bodies: list[bytes],
    rate: float,
    seconds: float,
    conns: int,
) -> tuple[np.ndarray, int, float]:
    """Send ``rate * seconds`` requests at fixed times; returns (latencies in s, errors, achieved rate)."""
    n = int(rate * seconds)
    queue: asyncio.Queue[tuple[int, float] | None] = asyncio.Queue()
    latencies = np.full(n, np.nan)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = Conn(host, port)
        while (item := await queue.get()) is not None:
            i, scheduled = item
            try:
                ok = await asyncio.wait_for(conn.request("/invocations", bodies[i % len(bodies)]), 10) == 200
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
                ok = False
                conn.close()
            latencies[i] = time.perf_counter() - scheduled
            errors += not ok
        conn.close()

    tasks = [asyncio.create_task(worker()) for _ in range(conns)]
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    start = time.perf_counter() + 0.05
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((i, scheduled))
    for _ in tasks:
        queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 60)
    return latencies, errors, n / (time.perf_counter() - start)


async def closed_loop(host: str, port: int, body: bytes, seconds: float, conns: int) -> tuple[int, int, float]:
    """Each connection sends ``body`` back to back for ``seconds``: (requests, errors, elapsed)."""
    end = time.perf_counter() + seconds
    counts = [0, 0]

    async def worker() -> None:
        conn = Conn(host, port)
        while time.perf_counter() < end:
            status = await asyncio.wait_for(conn.request("/invocations", body), 30)
            counts[0] += 1
            counts[1] += status != 200
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(conns)))
    return counts[0], counts[1], time.perf_counter() - t0


def inprocess_latency(model: Path, entities: list[str], ips: list[str], n: int = 3000) -> np.ndarray:
    """Seconds per one-record ``Scorer.dot_product`` call in this process."""
    import torch

    from ipinsights.score.scorer import Scorer

    torch.set_num_threads(1)
    scorer = Scorer.load(model)
    out = np.empty(n)
    for i in range(n):
        t0 = time.perf_counter()
        scorer.dot_product([entities[i % len(entities)]], [ips[i % len(ips)]])
        out[i] = time.perf_counter() - t0
    return out[100:]  # warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model directory (default: train a tutorial-sized toy model first)")
    p.add_argument("--url", help="use this running endpoint instead of starting one (loopback only)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--rate", type=float, default=500.0, help="requests per second (open loop)")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--batch-seconds", type=float, default=5.0)
    args = p.parse_args()
    if args.seconds * args.rate > 100_000:
        p.error("at most 100,000 requests per run")

    try:
        import uvloop

        uvloop.install()  # the client must cost the server as little CPU as possible
    except ImportError:
        pass
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the tests' toy model and server
    from servers import ServerProcess, train_toy_model

    tmp = tempfile.TemporaryDirectory()
    model = Path(args.model) if args.model else None
    if model is None:  # tutorial shape: vector_dim 128, 20k entity vectors
        model = train_toy_model(
            Path(tmp.name) / "model", n_entities=2000, events_per_entity=20, vector_dim=128, num_entity_vectors=20_000
        )
    rng = np.random.default_rng(0)
    entities = [f"user_{i}" for i in rng.integers(0, 2000, 1000)]
    ips = [".".join(map(str, o)) for o in rng.integers(1, 255, (1000, 4))]
    bodies = [f"{e},{ip}\n".encode() for e, ip in zip(entities, ips, strict=True)]
    batch = "".join(f"{entities[i % 1000]},{ips[(i * 7) % 1000]}\n" for i in range(args.batch_size)).encode()

    print(f"loadavg_before={os.getloadavg()[0]:.2f}")
    server = None
    if args.url:
        host, port = urlsplit(args.url).hostname or "127.0.0.1", urlsplit(args.url).port or 80
        if host not in ("127.0.0.1", "localhost", "::1"):
            p.error("--url must be a loopback address")
    else:
        server = ServerProcess(model, workers=args.workers, log_path=Path(tmp.name) / "serve.log").__enter__()
        host, port = "127.0.0.1", server.port
    try:
        asyncio.run(open_loop(host, port, bodies, 200, 2, args.connections))  # warm-up: connections, caches
        lat, errors, achieved = asyncio.run(open_loop(host, port, bodies, args.rate, args.seconds, args.connections))
        nreq, berr, elapsed = asyncio.run(closed_loop(host, port, batch, args.batch_seconds, args.workers))
    finally:
        if server is not None:
            server.stop()
    base = inprocess_latency(model, entities, ips)
    ms = 1e3
    p99 = float(np.nanpercentile(lat, 99)) * ms
    print(f"requests={lat.size}")
    print(f"rate_achieved_per_s={achieved:.1f}")
    print(f"errors={errors + int(np.isnan(lat).sum())}")
    print(f"latency_p50_ms={np.nanpercentile(lat, 50) * ms:.3f}")
    print(f"latency_p90_ms={np.nanpercentile(lat, 90) * ms:.3f}")
    print(f"latency_p99_ms={p99:.3f}")
    print(f"latency_max_ms={np.nanmax(lat) * ms:.3f}")
    print(f"batch_records_per_s={nreq * args.batch_size / elapsed:.0f}")
    print(f"batch_requests={nreq}")
    print(f"batch_errors={berr}")
    print(f"inprocess_one_record_p50_ms={np.percentile(base, 50) * ms:.3f}")
    print(f"inprocess_one_record_p99_ms={np.percentile(base, 99) * ms:.3f}")
    print(f"ratio_p99_server_vs_inprocess={p99 / (np.percentile(base, 99) * ms):.1f}")
    print(f"loadavg_after={os.getloadavg()[0]:.2f}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
