"""Single files and directories written atomically: a temporary name in the same directory, then a rename."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import pyarrow as pa

from ipinsights.storage.filesystems import arrow_fs, hadoop_path, jvm

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import SparkSession


@contextmanager
def atomic_write(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` and rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; outputs should get the usual permissions
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_local(path: str) -> bool:
    """A local path or ``file://`` URI (Python can open it directly)."""
    return "://" not in path or path.startswith("file://")


def local_path(path: str) -> Path:
    """The local path of a local path or ``file://`` URI."""
    return Path(path[len("file://") :] if path.startswith("file://") else path)


def write_json(path: str, obj: object, spark: SparkSession | None = None) -> None:
    """Write ``obj`` as indented JSON, atomically: a reader sees the old file or the whole new one.

    Local paths use :func:`atomic_write`. Other URIs go through Hadoop's filesystem of ``spark`` when
    given (same credentials and settings as the Spark job; S3A makes an object visible only when its
    upload completes), else ``pyarrow.fs`` (S3 PUTs are atomic too).
    """
    import json

    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if is_local(path):
        with atomic_write(local_path(path), "w", encoding="utf-8") as fh:
            fh.write(text)
        return
    if spark is not None:
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
        return
    fs, p = arrow_fs(path)
    with fs.open_output_stream(p) as out:
        out.write(text.encode("utf-8"))


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a small pandas DataFrame as CSV (with header) or Parquet, by suffix, atomically."""
    path = Path(path)
    if path.suffix == ".csv":
        with atomic_write(path, "w", encoding="utf-8", newline="") as fh:
            frame.to_csv(fh, index=False)
    elif path.suffix == ".parquet":
        import pyarrow.parquet as pq

        with atomic_write(path, "wb") as fh:
            pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), fh)
    else:
        raise ValueError(f"{path}: write_frame writes .csv or .parquet")
    return path


def copy_tree_atomic(src: str | Path, dst: str | Path) -> Path:
    """Copy directory ``src`` to ``dst`` (replacing it): copied beside ``dst``, then renamed into place."""
    import shutil

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        swap_dir_into_place(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def swap_dir_into_place(tmp: Path, path: Path) -> None:
    """Rename the finished directory ``tmp`` to ``path``, replacing an existing one with two renames."""
    import shutil

    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
