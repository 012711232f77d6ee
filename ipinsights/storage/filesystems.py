"""Filesystems behind URIs: pyarrow filesystems for the Python side, Hadoop's (through Spark) for the JVM side."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import pyarrow.fs as pafs

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

#: A py4j handle on a JVM object (a Hadoop FileSystem, Path, ...). py4j has no type information, so
#: such handles are opaque to the type checker.
JavaObject: TypeAlias = Any


def jvm(spark: SparkSession) -> JavaObject:
    """The py4j view of the driver's JVM (``jvm.org.apache.hadoop...``)."""
    view = spark.sparkContext._jvm
    if view is None:  # only before a SparkContext has started, which a session implies
        raise RuntimeError("the SparkContext has no JVM gateway")
    return view


#: A path component that is a URI scheme ("s3:"): what ``Path("s3://bucket/key")`` turns a URI into.
_SCHEME_PART = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:$")


def local_path(path: str | Path) -> Path:
    """The local path of a local path or ``file:`` URI; refuses a URI that was turned into a path.

    ``Path("s3://bucket/run")`` is ``s3:/bucket/run``: written to, it would create a local folder
    ``./s3:`` instead of reaching the bucket.
    """
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    elif text.startswith("file:"):
        text = text[len("file:") :]
    p = Path(text)
    if any(_SCHEME_PART.match(part) for part in p.parts):
        raise ValueError(f"{path}: a URI turned into a local path (keep URIs as strings, not pathlib.Path)")
    return p


def resolve_uri(spark: SparkSession, path: str) -> str:
    """Map ``s3://`` to ``s3a://`` when the cluster has no ``s3://`` filesystem (plain Apache Hadoop).

    EMR (EMRFS) and Databricks serve ``s3://`` themselves (``fs.s3.impl`` is set there), so the URI is
    left alone; local paths and other schemes pass through unchanged.
    """
    if path.startswith("s3://") and not spark.sparkContext._jsc.hadoopConfiguration().get("fs.s3.impl"):
        return "s3a://" + path[len("s3://") :]
    return path


def arrow_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(``pyarrow.fs`` filesystem, path) for a local path, ``file://`` or ``s3://``/``s3a://`` URI.

    S3 credentials, region and endpoint come from the AWS defaults (environment, profile, instance
    role; ``AWS_ENDPOINT_URL`` for another S3 API), the same on the driver and on every executor.
    """
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif uri.startswith("file:"):
        uri = uri[len("file:") :]  # Hadoop's spelling of a local file, file:/path
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    scheme, rest = uri.split("://", 1)
    if scheme in ("s3", "s3a", "s3n"):
        # The bucket alone goes through URI parsing (a key may hold glob characters URIs refuse).
        return _s3_filesystem(rest.split("/", 1)[0]), rest.rstrip("/")
    fs, path = pafs.FileSystem.from_uri(uri)
    return fs, path


@functools.lru_cache(maxsize=64)
def _s3_filesystem(bucket: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(f"s3://{bucket}")[0]  # resolves the bucket's region once


def arrow_uri(like: str, path: str) -> str:
    """A path from ``arrow_fs(like)``'s filesystem, back in the form of ``like`` (scheme and all)."""
    if "://" not in like:
        return path
    scheme = like.split("://", 1)[0]
    return f"file://{path}" if scheme == "file" else f"{scheme}://{path}"


ARROW_SCHEMES = ("file", "s3", "s3a", "s3n")


def arrow_readable(uri: str) -> bool:
    """True where :func:`arrow_fs` serves ``uri`` (local paths, ``file://``, S3)."""
    return "://" not in uri or uri.split("://", 1)[0] in ARROW_SCHEMES


def hadoop_path(spark: SparkSession, path: str) -> tuple[JavaObject, JavaObject]:
    """(Hadoop FileSystem, Path) for ``path``: the same filesystem and credentials as the Spark job."""
    p = jvm(spark).org.apache.hadoop.fs.Path(resolve_uri(spark, path))
    return p.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), p


class HadoopStore:
    """Folder and file operations on URIs through the Spark job's Hadoop filesystems (its credentials)."""

    def __init__(self, spark: SparkSession):
        self.spark = spark  # whose Hadoop filesystems and credentials it uses

    def _path(self, uri: str) -> tuple[JavaObject, JavaObject]:
        return hadoop_path(self.spark, uri)

    def exists(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p))

    def mkdirs(self, uri: str) -> None:
        fs, p = self._path(uri)
        fs.mkdirs(p)

    def delete(self, uri: str) -> bool:
        fs, p = self._path(uri)
        return bool(fs.exists(p) and fs.delete(p, True))

    def rename(self, src: str, dst: str) -> None:
        fs, s = self._path(src)
        if not fs.rename(s, self._path(dst)[1]):
            raise OSError(f"could not move {src} to {dst}")

    def list_files(self, uri: str) -> list[str]:
        fs, p = self._path(uri)
        if not fs.exists(p):
            return []
        return [str(st.getPath().toUri()) for st in fs.listStatus(p) if st.isFile()]


class ArrowStore:
    """The same operations through ``pyarrow.fs`` (local disks and S3; ``s3a://`` is read as ``s3://``),
    for jobs whose Python tasks read and write the files themselves."""

    def exists(self, uri: str) -> bool:
        fs, p = arrow_fs(uri)
        return bool(fs.get_file_info(p).type != pafs.FileType.NotFound)

    def mkdirs(self, uri: str) -> None:
        fs, p = arrow_fs(uri)
        fs.create_dir(p, recursive=True)

    def delete(self, uri: str) -> bool:
        fs, p = arrow_fs(uri)
        kind = fs.get_file_info(p).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif kind == pafs.FileType.File:
            fs.delete_file(p)
        return bool(kind != pafs.FileType.NotFound)

    def rename(self, src: str, dst: str) -> None:
        fs, s = arrow_fs(src)
        d = arrow_fs(dst)[1]
        if fs.type_name == "local" or fs.get_file_info(s).type == pafs.FileType.File:
            fs.move(s, d)  # a local rename is one metadata operation
            return
        # Object stores have no folders to rename: move each object (a copy and a delete).
        for info in fs.get_file_info(pafs.FileSelector(s, recursive=True)):
            if info.type == pafs.FileType.File:
                fs.move(info.path, d + info.path[len(s) :])
        fs.delete_dir(s)

    def list_files(self, uri: str) -> list[str]:
        fs, p = arrow_fs(uri)
        if fs.get_file_info(p).type != pafs.FileType.Directory:
            return []
        return [arrow_uri(uri, i.path) for i in fs.get_file_info(pafs.FileSelector(p)) if i.type == pafs.FileType.File]


def path_exists(spark: SparkSession, path: str) -> bool:
    """Whether ``path`` exists on its Hadoop filesystem (as the Spark job sees it)."""
    return HadoopStore(spark).exists(path)


def check_reachable(uri: str, what: str = "output") -> None:
    """Raise :class:`ConfigError` naming ``uri`` unless the Python side can write under it.

    Called before any Spark or training work: an unknown scheme, a missing bucket or an S3 endpoint
    that does not answer is reported at once, not after hours of training. Local paths need their
    nearest existing ancestor to be a writable directory.
    """
    from ipinsights.core.config import ConfigError

    if "://" not in uri or uri.startswith("file:"):
        try:
            p = local_path(uri).absolute()
        except ValueError as exc:
            raise ConfigError(f"{what} {uri}: {exc}") from None
        if p.is_file():  # an existing file, to be replaced: its folder must take the new one
            p = p.parent
        while not p.exists() and p != p.parent:
            p = p.parent
        if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
            raise ConfigError(f"{what} {uri}: {p} is not a writable directory")
        return
    try:
        fs, path = arrow_fs(uri)
        if fs.type_name == "s3":
            bucket = path.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise ConfigError(f"{what} {uri}: bucket {bucket!r} does not exist (or is not visible)")
        else:
            fs.get_file_info(path)
    except ConfigError:
        raise
    except (OSError, ValueError) as exc:  # pyarrow: ArrowInvalid (a ValueError), ArrowIOError (an OSError)
        raise ConfigError(f"{what} {uri}: the filesystem cannot be reached ({exc})") from None
