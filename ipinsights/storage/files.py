"""Files and directories at URIs (local paths, ``file:``, ``s3://`` ...), written atomically.

Local files are written under a temporary name in the same directory, then renamed. Other URIs go
through ``pyarrow.fs`` (:func:`ipinsights.storage.filesystems.arrow_fs`): a file is written to a local
temporary file first and uploaded in one stream, which an object store makes visible only once
complete. A directory is published file by file with one chosen file (a model's manifest) last, so
that a reader that finds that file finds the whole directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from ipinsights.storage.filesystems import ArrowStore, arrow_fs, hadoop_path, jvm
from ipinsights.storage.filesystems import local_path as local_path  # re-exported: files is its home for callers

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession

#: Upload and download chunk size.
_CHUNK = 8 << 20


def is_local(path: str | Path) -> bool:
    """A local path, ``file://`` or ``file:/`` URI (Python can open it directly)."""
    text = str(path)
    return isinstance(path, Path) or "://" not in text or text.startswith("file://")


def join_uri(base: str | Path, *parts: str) -> str:
    """``base/part/...`` for a local path or a URI (a URI keeps its scheme and its double slash)."""
    if is_local(base) and "://" not in str(base):
        return str(local_path(base).joinpath(*parts))
    return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])


def absolute_uri(uri: str | Path) -> str:
    """``uri`` with a local path made absolute (executors may run in another working directory)."""
    return str(local_path(uri).absolute()) if is_local(uri) else str(uri)


def uri_name(uri: str | Path) -> str:
    """The last component of a path or URI."""
    return str(uri).rstrip("/").rsplit("/", 1)[-1]


def uri_exists(uri: str | Path) -> bool:
    """Whether a file or directory exists at ``uri``."""
    if is_local(uri):
        return local_path(uri).exists()
    fs, p = arrow_fs(str(uri))
    return bool(fs.get_file_info(p).type != pafs.FileType.NotFound)


def is_file(uri: str | Path) -> bool:
    """Whether ``uri`` is a file."""
    if is_local(uri):
        return local_path(uri).is_file()
    fs, p = arrow_fs(str(uri))
    return bool(fs.get_file_info(p).type == pafs.FileType.File)


def file_stamp(uri: str | Path) -> int:
    """The modification time of a file in ns (changes when the file is rewritten)."""
    if is_local(uri):
        return local_path(uri).stat().st_mtime_ns
    fs, p = arrow_fs(str(uri))
    info = fs.get_file_info(p)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(f"{uri}: no such file")
    return int(info.mtime_ns or 0) ^ int(info.size or 0)


def read_bytes(uri: str | Path) -> bytes:
    """The contents of a file (``FileNotFoundError`` naming ``uri`` when there is none)."""
    if is_local(uri):
        return local_path(uri).read_bytes()
    fs, p = arrow_fs(str(uri))
    try:
        with fs.open_input_stream(p) as fh:
            return bytes(fh.read())
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def read_text(uri: str | Path) -> str:
    """The contents of a UTF-8 text file."""
    return read_bytes(uri).decode("utf-8")


def delete_uri(uri: str | Path) -> bool:
    """Remove the file or directory tree at ``uri`` if there is one; True if something was removed."""
    if is_local(uri):
        p = local_path(uri)
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            return True
        if p.exists():
            p.unlink(missing_ok=True)
            return True
        return False
    return ArrowStore().delete(str(uri))


def _upload(local: Path, uri: str) -> None:
    fs, p = arrow_fs(uri)
    # S3 has no folders to create; other filesystems (HDFS) need the parent.
    if fs.type_name != "s3":
        fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
    with open(local, "rb") as src, fs.open_output_stream(p) as out:
        while block := src.read(_CHUNK):
            out.write(block)


def _download(uri: str, local: Path) -> None:
    fs, p = arrow_fs(uri)
    try:
        with fs.open_input_stream(p) as src, open(local, "wb") as out:
            while block := src.read(_CHUNK):
                out.write(block)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such file") from None


def fetch(uri: str | Path, dst: Path) -> None:
    """Copy the file at ``uri`` (a path or URI) to the local path ``dst``, a block at a time."""
    if is_local(uri):
        shutil.copyfile(local_path(uri), dst)
    else:
        _download(str(uri), dst)


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for ``path`` and put it in place only if the block succeeds.

    Local: a temporary file beside ``path``, renamed over it. A URI: a local temporary file, uploaded
    once the block ends (an object store shows the object only when its upload completes).
    """
    if not is_local(path):
        with tempfile.TemporaryDirectory(prefix="ipinsights-upload-") as tmpdir:
            tmp = Path(tmpdir) / "file"
            with open(tmp, mode, **kwargs) as fh:
                yield fh
            _upload(tmp, str(path))
        return
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; outputs should get the usual permissions
    try:
        with open(tmp_name, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_leftovers(folder: str | Path) -> list[Path]:
    """Temporary files that :func:`atomic_write` left in a local ``folder`` when its process was killed
    (a URI's temporaries live in the local temp directory and go with the process)."""
    if not is_local(folder) or not local_path(folder).is_dir():
        return []
    return sorted(local_path(folder).glob(".*.tmp"))


def write_bytes(uri: str | Path, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically."""
    with atomic_write(uri, "wb") as fh:
        fh.write(data)


def write_json(path: str, obj: object, spark: SparkSession | None = None) -> None:
    """Write ``obj`` as indented JSON, atomically: a reader sees the old file or the whole new one.

    Local paths use :func:`atomic_write`. Other URIs go through Hadoop's filesystem of ``spark`` when
    given (same credentials and settings as the Spark job; S3A makes an object visible only when its
    upload completes), else ``pyarrow.fs`` (S3 PUTs are atomic too).
    """
    import json

    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if is_local(path) or spark is None:
        with atomic_write(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    fs, hpath = hadoop_path(spark, path)
    tmp = jvm(spark).org.apache.hadoop.fs.Path(hpath.getParent(), f".{hpath.getName()}.tmp")
    out = fs.create(tmp, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()
    # On object stores rename is a copy of one small object; on HDFS it is atomic.
    fs.delete(hpath, False)
    fs.rename(tmp, hpath)


def write_frame(frame: pd.DataFrame, path: str | Path) -> str | Path:
    """Write a small pandas DataFrame as CSV (with header) or Parquet, by suffix, atomically."""
    if str(path).endswith(".csv"):
        with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
    elif str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        with atomic_write(path, "wb") as fh:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), fh)
    else:
        raise ValueError(f"{path}: write_frame writes .csv or .parquet")
    return path


def publish_dir(src: Path, dst: str | Path, last: str | None = None) -> None:
    """Put the finished local directory ``src`` at ``dst``, replacing what is there.

    Local ``dst``: ``src`` must be its sibling (made with :func:`tempfile.mkdtemp` beside it); two
    renames. A URI: an object store has no directory rename, so the files are uploaded one by one,
    ``last`` after all others, and an old ``last`` at ``dst`` is removed before anything else: a
    reader that trusts only a directory holding ``last`` never sees a mix of old and new files.
    """
    if is_local(dst):
        swap_dir_into_place(src, local_path(dst))
        return
    dst = str(dst).rstrip("/")
    fs, root = arrow_fs(dst)
    old = []
    if fs.get_file_info(root).type == pafs.FileType.Directory:
        old = [
            i.path for i in fs.get_file_info(pafs.FileSelector(root, recursive=True)) if i.type == pafs.FileType.File
        ]
    if last is not None and f"{root}/{last}" in old:
        fs.delete_file(f"{root}/{last}")
    files = sorted(p for p in src.rglob("*") if p.is_file())
    names = [p.relative_to(src).as_posix() for p in files]
    for p, name in sorted(zip(files, names, strict=True), key=lambda fn: fn[1] == last):
        _upload(p, join_uri(dst, name))
    for stale in set(old) - {f"{root}/{n}" for n in names}:
        if stale != f"{root}/{last}":
            fs.delete_file(stale)


def download_dir(src: str, dst: Path, names: list[str] | None = None) -> None:
    """Copy the files of directory ``src`` (or only ``names``, in that order) into local ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    if names is None:
        fs, root = arrow_fs(src)
        names = [
            i.path[len(root.rstrip("/")) + 1 :]
            for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
            if i.type == pafs.FileType.File
        ]
    for name in names:
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        _download(join_uri(src, name), dst / name)


def copy_tree_atomic(src: str | Path, dst: str | Path, last: str | None = None) -> str | Path:
    """Copy directory ``src`` to ``dst`` (replacing it), each a path or URI, as :func:`publish_dir` does."""
    if is_local(dst):
        dst_path = local_path(dst)
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst_path.name}.", dir=dst_path.parent))
    else:
        tmp = Path(tempfile.mkdtemp(prefix="ipinsights-copy-"))
    try:
        if is_local(src):
            shutil.copytree(local_path(src), tmp, dirs_exist_ok=True)
        else:
            download_dir(str(src), tmp)
        publish_dir(tmp, dst, last)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already when renamed into place
    return dst


def swap_dir_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` to ``path``, replacing an existing one with two renames."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def cache_root() -> Path:
    """Where copies of remote models and files are kept: ``$IPINSIGHTS_CACHE_DIR``, else the user's cache."""
    configured = os.environ.get("IPINSIGHTS_CACHE_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ipinsights"


#: Entries kept per cache folder: a worker holds a model and its profile, a job seldom more than two models.
CACHE_ENTRIES = 4


def cached(kind: str, key: str, fill: Callable[[Path], None], keep: int = CACHE_ENTRIES) -> Path:
    """The cache entry ``kind/key`` (a directory), made by ``fill(tmpdir)`` on a miss.

    ``key`` must change whenever the content does (a checksum). Processes filling the same entry at
    once each fill a private folder; the first rename wins. Only the ``keep`` most recently used
    entries of ``kind`` stay, so the cache does not grow with every new model.
    """
    root = cache_root() / kind
    entry = root / hashlib.sha256(key.encode()).hexdigest()[:32]
    if entry.is_dir():
        os.utime(entry)  # most recently used
        return entry
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fill-", dir=root))
    try:
        fill(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process put the same entry in place first
            if not entry.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _evict(root, keep, entry)
    return entry


def _evict(root: Path, keep: int, current: Path) -> None:
    entries = []
    for p in root.iterdir():
        if p.is_dir() and not p.name.startswith("."):
            try:
                entries.append((p.stat().st_mtime, p))
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
    entries.sort(reverse=True)
    for _, p in entries[keep:]:
        if p != current:
            shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".fill-*"):  # fills abandoned by killed processes, an hour on
        try:
            if p.stat().st_mtime < time.time() - 3600:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:
            continue


def local_copy(uri: str | Path) -> Path:
    """A local path holding the file at ``uri``: the file itself when local, else a cached download."""
    if is_local(uri):
        return local_path(uri)
    name = uri_name(uri)
    entry = cached("files", f"{uri}|{file_stamp(uri)}", lambda d: _download(str(uri), d / name))
    return entry / name
