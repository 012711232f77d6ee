"""Leases: one run at a time writes each thing (a day of a table, a training output, a model's sidecar).

A run takes a lease on everything it is about to write before it reads what it will replace, holds it
while it stages and publishes, and gives it back at the end. Two runs that write different things (two
scoring runs of different days) proceed together; two that write the same thing do not: the second
waits (``lease.on_busy: wait``, up to ``lease.wait_minutes``, logging the holder every 30 s) or fails at
once with :class:`LeaseBusyError` (``on_busy: fail``; the jobs exit 4: retry later). A run takes its leases in
sorted order, so two runs that want overlapping sets never wait for each other in a circle.

**The lease object** of a target lives beside it (:func:`lease_uri`): a day folder ``T/dt=D`` of a table
``T`` has ``<parent of T>/_leases/<name of T>/dt=D.lease``, anything else (``runs/m1``,
``models/m.calibration.json``) ``<parent>/_leases/<name>.lease``; outside the table, so that no reader of
the table ever lists it. It is a small JSON record naming the holder (run id, host, process, start
time, a random ``owner``) and its ``ttl_seconds``, and every write of it carries a fresh random part.
Three operations, each atomic on its store (:class:`LeaseStore`):

* **create** where there is none: S3 ``PutObject`` with ``If-None-Match: *``; HDFS (and the other Hadoop
  filesystems) an exclusive ``create``; local files under an exclusive ``flock`` of the lease file;
* **swap** the record a run read for a new one (or none), failing if anyone wrote it since: S3
  ``If-Match`` on the ETag; HDFS an exclusive create of the next numbered version (the highest one is
  the record); local files, the same ``flock`` (read, compare, write in place);
* **now**, the store's own clock: S3 the ``Date`` of a response, HDFS the NameNode's time of a probe
  file, a local (or NFS) disk the time it stamps on the lease folder when touched.

**Expiry is judged on the store's clock**: a lease whose record was last written more than its
``ttl_seconds`` ago (its ``LastModified``/mtime against the store's now) belongs to a run that stopped
renewing it; no host's clock is compared with another's. A holder renews its leases every quarter of
the TTL (a heartbeat thread): each renewal is a swap, so it fails once anyone else took the lease.
A lease whose holder ran on this host and whose process is gone (same boot, same PID namespace, and
no process with that PID and start time) is taken over at once, without waiting for the TTL.

**Takeover and fencing.** A run takes a stale lease over by a swap (so two runs never both take it), and
only then touches what the dead run left (its publish journal: :class:`ipinsights.storage.publish.Publisher`).
Before each publish move a run renews its leases (:meth:`Leases.renew`, a swap again): if any was
taken over it raises :class:`LeaseLostError` and publishes nothing more, leaving its journal and staging to
the run that took over; since the renewal just restarted the TTL, the move that follows has a whole TTL
before anyone may judge the lease stale. (A move still running a TTL after its check, or a store that
does not honour the conditions, is the limit of what leases guarantee: the TTL must exceed any pause.)

The store's clock and the interval of the checks are behind a small :class:`Clock` (tests advance one to
expire leases without waiting).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol

from ipinsights.core.config import LeaseOptions
from ipinsights.storage.filesystems import hadoop_path, jvm, local_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

__all__ = [
    "Clock",
    "LeaseBusyError",
    "LeaseError",
    "LeaseLostError",
    "LeaseRef",
    "Leases",
    "ShiftedClock",
    "StoreClock",
    "lease_store",
    "lease_uri",
    "set_clock",
]

#: The folder, beside what is written, that holds its leases.
LEASE_DIR = "_leases"
#: A waiting run logs who holds what it waits for this often.
WAIT_LOG_SECONDS = 30.0


class LeaseError(RuntimeError):
    """Another run holds, or took over, something this run writes (nothing was lost: retry later)."""


class LeaseBusyError(LeaseError):
    """Another live run holds a lease this run needs (``on_busy: fail``, or waited ``wait_minutes``)."""

    def __init__(self, message: str, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLostError(LeaseError):
    """This run's lease was taken over (it stopped renewing it for a TTL): it must publish nothing more."""


# ---- the stores ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    """A lease object as read: its record (``{}``: given back), the token a swap must match, and when it
    was last written on the store's clock (epoch seconds)."""

    data: dict[str, Any]
    token: str
    mtime: float


class LeaseStore(Protocol):
    """The three atomic operations a lease needs from a store (see the module docstring)."""

    def read(self, uri: str) -> Record | None:
        """The lease object at ``uri``, or None where there is none."""
        ...

    def create(self, uri: str, data: dict[str, Any]) -> str | None:
        """Write ``data`` at ``uri`` if there is no lease object there; its token, or None if there is one."""
        ...

    def swap(self, uri: str, token: str, data: dict[str, Any] | None) -> str | None:
        """Replace the object whose token is ``token`` with ``data`` (None: give it back); the new token,
        or None when the object is no longer the one that token names."""
        ...

    def now(self, uri: str) -> float:
        """The store's clock, in epoch seconds, where ``uri`` lives."""
        ...


def _encode(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, sort_keys=True) + "\n").encode()


class LocalLeaseStore:
    """Local (and NFS) files: every operation under an exclusive ``flock`` of the lease file, which is
    written in place (a lock-based compare-and-swap; NFS clients map it to the server's locks). A lease
    given back is an empty file: the file itself, and so its lock, is never removed."""

    @contextmanager
    def _locked(self, uri: str, create: bool) -> Iterator[int | None]:
        import fcntl

        path = local_path(uri)
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
        except FileNotFoundError:
            yield None
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # and the lock with it

    @staticmethod
    def _get(fd: int) -> Record | None:
        chunks = []
        os.lseek(fd, 0, os.SEEK_SET)
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        if not b"".join(chunks).strip():
            return None
        data: dict[str, Any] = json.loads(b"".join(chunks))
        return Record(data, str(data["write"]), os.fstat(fd).st_mtime)

    @staticmethod
    def _put(fd: int, data: dict[str, Any] | None) -> None:
        os.ftruncate(fd, 0)
        if data is not None:
            os.pwrite(fd, _encode(data), 0)
        os.fsync(fd)

    def read(self, uri: str) -> Record | None:
        with self._locked(uri, False) as fd:
            return None if fd is None else self._get(fd)

    def create(self, uri: str, data: dict[str, Any]) -> str | None:
        with self._locked(uri, True) as fd:
            assert fd is not None
            if self._get(fd) is not None:
                return None
            self._put(fd, data)
            return str(data["write"])

    def swap(self, uri: str, token: str, data: dict[str, Any] | None) -> str | None:
        with self._locked(uri, False) as fd:
            current = None if fd is None else self._get(fd)
            if fd is None or current is None or current.token != token:
                return None
            self._put(fd, data)
            return "" if data is None else str(data["write"])

    def now(self, uri: str) -> float:
        folder = local_path(uri).parent
        folder.mkdir(parents=True, exist_ok=True)
        os.utime(folder)  # stamped by the filesystem (an NFS server's clock on NFS)
        return folder.stat().st_mtime


class S3LeaseStore:
    """S3 (and S3 APIs that honour conditional writes): ``If-None-Match: *`` creates, ``If-Match`` on the
    ETag swaps and deletes. Through boto3 (the ``s3`` extra): pyarrow cannot make conditional writes.
    Credentials, region and endpoint (``AWS_ENDPOINT_URL``) come from the AWS defaults, as for pyarrow."""

    _CONFLICT = ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "409", "412")

    def __init__(self, settings: tuple[tuple[str, str], ...] = ()) -> None:
        try:
            import boto3
        except ImportError:
            from ipinsights.core.config import ConfigError

            raise ConfigError("leases on s3:// need boto3: pip install 'ipinsights[s3]'") from None
        self.client = boto3.client("s3", **dict(settings))

    @staticmethod
    def _split(uri: str) -> tuple[str, str]:
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        return bucket, key

    def _conflict(self, exc: Exception) -> bool:
        error = getattr(exc, "response", {}).get("Error", {})
        return str(error.get("Code")) in self._CONFLICT

    def read(self, uri: str) -> Record | None:
        bucket, key = self._split(uri)
        try:
            got = self.client.get_object(Bucket=bucket, Key=key)
        except Exception as exc:
            if self._conflict(exc):
                return None
            raise
        body = got["Body"].read()
        data: dict[str, Any] = json.loads(body) if body.strip() else {}
        return Record(data, str(got["ETag"]), got["LastModified"].timestamp())

    def create(self, uri: str, data: dict[str, Any]) -> str | None:
        bucket, key = self._split(uri)
        try:
            put = self.client.put_object(Bucket=bucket, Key=key, Body=_encode(data), IfNoneMatch="*")
        except Exception as exc:
            if self._conflict(exc):
                return None
            raise
        return str(put["ETag"])

    def swap(self, uri: str, token: str, data: dict[str, Any] | None) -> str | None:
        bucket, key = self._split(uri)
        try:
            if data is None:
                self.client.delete_object(Bucket=bucket, Key=key, IfMatch=token)
                return ""
            put = self.client.put_object(Bucket=bucket, Key=key, Body=_encode(data), IfMatch=token)
        except Exception as exc:
            if self._conflict(exc):
                return None
            raise
        return str(put["ETag"])

    def now(self, uri: str) -> float:
        from email.utils import parsedate_to_datetime

        head = self.client.head_bucket(Bucket=self._split(uri)[0])
        return parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()


class HadoopLeaseStore:
    """HDFS and the other Hadoop filesystems, through the Spark job's: the lease object is a folder of
    numbered versions, ``v000000000001.json`` ..., the highest one the record. A swap from version N is an
    exclusive ``create`` of N+1 (atomic on HDFS's NameNode: of two runs swapping from N, one gets it), then
    a check that nothing higher exists; older versions are deleted, the newest always kept."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark

    def _versions(self, uri: str) -> list[int]:
        fs, folder = hadoop_path(self.spark, uri)
        if not fs.exists(folder):
            return []
        names = [str(st.getPath().getName()) for st in fs.listStatus(folder)]
        return sorted(int(n[1:-5]) for n in names if n.startswith("v") and n.endswith(".json") and n[1:-5].isdigit())

    def _file(self, uri: str, version: int) -> str:
        return f"{uri.rstrip('/')}/v{version:012d}.json"

    def read(self, uri: str) -> Record | None:
        for _ in range(50):  # a version being written is briefly visible short
            versions = self._versions(uri)
            if not versions:
                return None
            fs, path = hadoop_path(self.spark, self._file(uri, versions[-1]))
            try:
                stream = fs.open(path)
                try:
                    text = str(jvm(self.spark).org.apache.commons.io.IOUtils.toString(stream, "UTF-8"))
                finally:
                    stream.close()
                data: dict[str, Any] = json.loads(text) if text.strip() else {}
                if text.strip() and not text.endswith("\n"):
                    raise ValueError("partly written")
            except Exception:  # deleted or partly written meanwhile: look again
                time.sleep(0.02)
                continue
            return Record(data, str(versions[-1]), fs.getFileStatus(path).getModificationTime() / 1000.0)
        raise OSError(f"lease {uri}: no readable version")

    def _put(self, uri: str, version: int, data: dict[str, Any]) -> bool:
        fs, path = hadoop_path(self.spark, self._file(uri, version))
        try:
            out = fs.create(path, False)  # exclusive: FileAlreadyExistsException when it exists
        except Exception:
            return False
        try:
            out.write(bytearray(_encode(data)))
        finally:
            out.close()
        return True

    def create(self, uri: str, data: dict[str, Any]) -> str | None:
        if self._versions(uri) or not self._put(uri, 1, data):
            return None
        return "1"

    def swap(self, uri: str, token: str, data: dict[str, Any] | None) -> str | None:
        version = int(token) + 1
        if not self._put(uri, version, data or {}):
            return None
        versions = self._versions(uri)
        if versions[-1] != version:  # a swap from an older version than the newest: not the record
            return None
        for old in versions[:-1]:
            fs, path = hadoop_path(self.spark, self._file(uri, old))
            fs.delete(path, False)
        return str(version)

    def now(self, uri: str) -> float:
        fs, probe = hadoop_path(self.spark, f"{uri.rstrip('/')}/.clock")
        fs.create(probe, True).close()
        return float(fs.getFileStatus(probe).getModificationTime()) / 1000.0


def lease_store(uri: str, spark: SparkSession | None = None) -> LeaseStore:
    """The store of the lease object ``uri``: local files, S3 (``s3``, ``s3a``, ``s3n``), else a Hadoop
    filesystem through ``spark`` (HDFS, DBFS, ...)."""
    scheme = uri.split("://", 1)[0] if "://" in uri else "file"
    if scheme == "file" or uri.startswith("file:"):
        return LocalLeaseStore()
    if scheme in ("s3", "s3a", "s3n"):
        return _s3_store(os.environ.get("AWS_ENDPOINT_URL"), _s3a_settings(spark) if spark is not None else ())
    if spark is None:
        raise ValueError(f"a lease on {uri} goes through Hadoop's filesystem: it needs the Spark session")
    return HadoopLeaseStore(spark)


@lru_cache(maxsize=4)
def _s3_store(endpoint: str | None, settings: tuple[tuple[str, str], ...]) -> S3LeaseStore:
    return S3LeaseStore(settings)  # (one client per endpoint: boto3 reads AWS_ENDPOINT_URL when it is made)


def _s3a_settings(spark: SparkSession) -> tuple[tuple[str, str], ...]:
    """boto3's client settings from the Spark job's S3A ones where it has them (an endpoint, static keys), so
    that a job that reaches S3 through Hadoop alone reaches its leases the same way; else the AWS defaults."""
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    names = {
        "endpoint_url": "fs.s3a.endpoint",
        "aws_access_key_id": "fs.s3a.access.key",
        "aws_secret_access_key": "fs.s3a.secret.key",
        "aws_session_token": "fs.s3a.session.token",
        "region_name": "fs.s3a.endpoint.region",
    }
    found = {k: str(v) for k, name in names.items() if (v := conf.get(name))}
    endpoint = found.get("endpoint_url")
    if endpoint and "://" not in endpoint:
        ssl = str(conf.get("fs.s3a.connection.ssl.enabled") or "true").lower() != "false"
        found["endpoint_url"] = f"{'https' if ssl else 'http'}://{endpoint}"
    return tuple(sorted(found.items()))


def lease_uri(target: str) -> str:
    """Where the lease of ``target`` lives (see the module docstring): beside a table for its day folder
    (``T/dt=D``: ``<parent of T>/_leases/<name of T>/dt=D.lease``), else beside ``target`` itself."""
    from ipinsights.storage.files import absolute_uri

    path = absolute_uri(target).rstrip("/")
    head, _, name = path.rpartition("/")
    if "=" in name:  # a partition folder: its table's leases
        head, _, table = head.rpartition("/")
        return f"{head}/{LEASE_DIR}/{table}/{name}.lease"
    return f"{head}/{LEASE_DIR}/{name}.lease"


# ---- the clock ----------------------------------------------------------------------------------------


class Clock(Protocol):
    """Now, on the store's clock, where a lease object lives (for judging whether it expired)."""

    def now(self, store: LeaseStore, uri: str) -> float: ...


class StoreClock:
    """The store's own clock (:meth:`LeaseStore.now`)."""

    def now(self, store: LeaseStore, uri: str) -> float:
        return store.now(uri)


@dataclass
class ShiftedClock(StoreClock):
    """The store's clock moved ``offset`` seconds on: tests expire leases by moving it."""

    offset: float = 0.0

    def now(self, store: LeaseStore, uri: str) -> float:
        return store.now(uri) + self.offset


_clock: Clock = StoreClock()


def set_clock(clock: Clock) -> Clock:
    """Judge expiry with ``clock`` from now on (this process); returns the one it replaces."""
    global _clock
    old, _clock = _clock, clock
    return old


# ---- who holds a lease -------------------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, Linux); None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


@lru_cache(maxsize=1)
def _host() -> dict[str, str]:
    """This host, boot and PID namespace: a holder with the same three ran where this process can see it."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:  # not Linux: a holder's process cannot be looked up
        boot = pidns = ""
    return {"host": socket.gethostname(), "boot": boot, "pidns": pidns}


def holder_gone(data: dict[str, Any]) -> bool:
    """Whether the holder of a lease record was a process on this host that no longer runs."""
    here = _host()
    if not here["boot"] or any(data.get(k) != v for k, v in here.items()):
        return False
    pid = data.get("pid")
    return not isinstance(pid, int) or _proc_start(pid) != data.get("pstart")


def describe(data: dict[str, Any]) -> str:
    """A lease's holder in words, for logs and errors."""
    return f"run {data.get('run_id')} (host {data.get('host')}, pid {data.get('pid')}, started {data.get('started')})"


# ---- a run's leases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeaseRef:
    """One held lease, picklable: another process of the same run (a training rank) renews it with
    :meth:`renew` before it publishes, as the run itself does (local files and S3 only)."""

    uri: str
    owner: str
    record: dict[str, Any]

    def renew(self, store: LeaseStore | None = None) -> str:
        """Renew the lease (a swap): its new token; :class:`LeaseLostError` if another run took it over."""
        store = store or lease_store(self.uri)
        for _ in range(20):
            current = store.read(self.uri)
            if current is None or current.data.get("owner") != self.owner:
                now = (
                    f"it is now held by {describe(current.data)}"
                    if current and current.data
                    else "and given back since"
                )
                raise LeaseLostError(f"the lease {self.uri} was taken over by another run ({now})")
            token = store.swap(self.uri, current.token, {**self.record, "write": uuid.uuid4().hex})
            if token is not None:
                return token
        raise LeaseLostError(f"the lease {self.uri} could not be renewed: it kept changing")

    def __call__(self) -> None:
        """The fence before a publish move (see :meth:`renew`)."""
        self.renew()


@dataclass
class Leases:
    """The leases of one run: taken (:meth:`acquire`, sorted), renewed by a heartbeat while the block runs,
    checked before each publish move (:meth:`renew`), given back at the end of the block (or :meth:`release`).

    ``taken_over`` maps each target whose lease this run took from a stopped run to that run's record.
    """

    run_id: str
    options: LeaseOptions = field(default_factory=LeaseOptions)
    spark: SparkSession | None = None
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    owner: str = field(default_factory=lambda: uuid.uuid4().hex)
    held: dict[str, LeaseRef] = field(default_factory=dict)  # target -> its lease
    taken_over: dict[str, dict[str, Any]] = field(default_factory=dict)
    lost: LeaseLostError | None = field(default=None, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _beat: threading.Thread | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __enter__(self) -> Leases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _record(self, target: str) -> dict[str, Any]:
        me = {"run_id": self.run_id, "pid": os.getpid(), "pstart": _proc_start(os.getpid()), **_host()}
        return {
            **me,
            "started": self.started,
            "owner": self.owner,
            "target": target,
            "ttl_seconds": self.options.ttl_seconds,
        }

    def acquire(self, targets: Iterable[str], wait: bool = True) -> bool:
        """Take the lease of every target not held yet, in sorted order. Busy ones: wait (per the options)
        or raise :class:`LeaseBusyError`; with ``wait=False``, give back what this call took and return False."""
        taken: list[str] = []
        for target in sorted(set(targets) - set(self.held)):
            if not self._take(target, wait):
                self.release(taken)
                return False
            taken.append(target)
        if self.held and self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat, name=f"lease-heartbeat-{self.run_id}", daemon=True)
            self._beat.start()
        return True

    def _take(self, target: str, wait: bool) -> bool:
        uri = lease_uri(target)
        store = lease_store(uri, self.spark)
        record = self._record(target)
        ttl = self.options.ttl_seconds
        patient = wait and self.options.on_busy == "wait"
        deadline = time.monotonic() + self.options.wait_minutes * 60.0
        next_log = time.monotonic()
        while True:
            found = store.read(uri)
            token: str | None
            if found is None or not found.data:  # none, or given back
                mine = {**record, "write": uuid.uuid4().hex}
                token = store.create(uri, mine) if found is None else store.swap(uri, found.token, mine)
                if token is not None:
                    break
                continue
            holder = found.data
            age = _clock.now(store, uri) - found.mtime
            if age > float(holder.get("ttl_seconds", ttl)) or holder_gone(holder):
                mine = {**record, "write": uuid.uuid4().hex}
                if store.swap(uri, found.token, mine) is not None:
                    self.taken_over[target] = holder
                    log.warning("took over the lease of %s from %s, silent for %.0f s", target, describe(holder), age)
                    break
                continue
            if not patient or time.monotonic() >= deadline:
                if not wait:
                    return False
                waited = "" if not patient else f" after waiting {self.options.wait_minutes:g} minutes"
                raise LeaseBusyError(
                    f"{target} is being written by {describe(holder)}{waited}: retry later "
                    f"(lease {uri}; lease.on_busy={self.options.on_busy})",
                    holder,
                )
            if time.monotonic() >= next_log:
                log.info("waiting for %s: held by %s", target, describe(holder))
                next_log += WAIT_LOG_SECONDS
            time.sleep(min(2.0, max(0.01, ttl / 20)))
        with self._lock:
            self.held[target] = LeaseRef(uri, self.owner, record)
        return True

    def renew(self) -> None:
        """Renew every held lease now (the fence before a publish move): :class:`LeaseLostError` if any was
        taken over, and from then on every call raises it."""
        with self._lock:
            if self.lost is not None:
                raise self.lost
            try:
                for ref in self.held.values():
                    ref.renew(lease_store(ref.uri, self.spark))
            except LeaseLostError as exc:
                self.lost = exc
                log.error("fenced: %s; this run publishes nothing more", exc)
                raise

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.options.ttl_seconds / 4):
            try:
                self.renew()
            except LeaseLostError:
                return
            except Exception as exc:  # a store that did not answer this time: the next beat tries again
                log.warning("could not renew the leases of run %s: %s", self.run_id, exc)

    def ref(self, target: str) -> LeaseRef:
        """The lease of ``target``, for another process of this run (:class:`LeaseRef`)."""
        return self.held[target]

    def release(self, targets: Iterable[str] | None = None) -> None:
        """Give back the leases of ``targets`` (default: all) that are still this run's."""
        beat = None
        with self._lock:
            chosen = list(self.held) if targets is None else [t for t in targets if t in self.held]
            for target in chosen:
                ref = self.held.pop(target)
                store = lease_store(ref.uri, self.spark)
                current = store.read(ref.uri)
                if current is not None and current.data.get("owner") == self.owner:
                    store.swap(ref.uri, current.token, None)
            if not self.held and self._beat is not None:
                self._stop.set()
                beat, self._beat = self._beat, None
        if beat is not None:
            beat.join()
            self._stop.clear()
