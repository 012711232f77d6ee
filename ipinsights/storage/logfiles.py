"""Raw log files: listing globs on any filesystem, planning byte-range splits, reading lines by Hadoop's
line-ownership rule in bounded blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs

from ipinsights.storage.filesystems import arrow_fs, arrow_readable, arrow_uri, hadoop_path, resolve_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def read_log_lines(spark: SparkSession, paths: str | Iterable[str]) -> DataFrame:
    """Text or gzip logs -> DataFrame(``value`` string, ``source_file`` string), one row per line.

    ``paths`` are files, directories or globs: local, ``file://``, ``s3://``/``s3a://`` or anything
    with a Hadoop filesystem. ``.gz`` (and other Hadoop codecs) are decompressed by extension; a gzip
    file cannot be split, so one task reads it whole: prefer several files to one huge one.
    """
    from pyspark.sql import functions as F

    uris = [resolve_uri(spark, p) for p in ([paths] if isinstance(paths, str) else paths)]
    if not uris:
        raise ValueError("read_log_lines: no input paths given")
    # wholetext=False: one row per line; Hadoop's reader handles \n, \r\n and \r endings.
    df = spark.read.format("text").load(uris)
    return df.select("value", F.col("_metadata.file_path").alias("source_file"))


#: Compressed logs by extension (none of them can be split: one task reads such a file whole).
LOG_CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A Hadoop-style glob (``*``, ``?``, ``[..]``, ``{a,b}``; none crosses a '/') as a compiled regex."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
                i = j
        elif c == "{":
            j = pattern.find("}", i + 1)
            if j < 0:
                out.append(re.escape(c))
            else:
                out.append("(?:" + "|".join(re.escape(a) for a in pattern[i + 1 : j].split(",")) + ")")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))


def split_inputs(text: str) -> list[str]:
    """A command line's comma-separated inputs -> the paths: a comma inside a glob's ``{a,b}`` belongs
    to the glob, and ``[...]`` is a character class, not list brackets."""
    out, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c == "{":
            depth += 1
        elif c == "}":
            depth = max(0, depth - 1)
        elif c == "," and depth == 0:
            out.append(text[start:i])
            start = i + 1
    out.append(text[start:])
    return [p.strip() for p in out if p.strip()]


@dataclass(frozen=True)
class LogSplit:
    """Bytes ``[start, end)`` of one log file: the lines that *start* in that range (a task's input)."""

    uri: str
    start: int
    end: int
    codec: str | None = None  # compressed files are read whole (start 0, end = the file's size)


def list_log_files(paths: Iterable[str]) -> list[tuple[str, int]]:
    """(URI, size) of every log file that ``paths`` names: files, folders (their files) or globs.

    Local files come back as ``file:/abs/path``, other URIs in the scheme they were given in.

    As Spark's text source does: names starting with '_' or '.' are skipped, and a path or glob that
    matches nothing is an error (a typo must not make an empty, successful run).
    """
    found: dict[str, int] = {}
    for uri in paths:
        fs, path = arrow_fs(uri)
        if any(c in path for c in "*?[{"):
            cut = min(path.index(c) for c in "*?[{" if c in path)
            base = path[: path.rfind("/", 0, cut) + 1] or "/"
            rx = _glob_regex(path)
            infos = fs.get_file_info(pafs.FileSelector(base.rstrip("/") or "/", recursive=True, allow_not_found=True))
            hits = [i for i in infos if rx.fullmatch(i.path)]
            files = [i for i in hits if i.type == pafs.FileType.File]
            for d in (i for i in hits if i.type == pafs.FileType.Directory):
                files += [i for i in fs.get_file_info(pafs.FileSelector(d.path)) if i.type == pafs.FileType.File]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                files = [i for i in fs.get_file_info(pafs.FileSelector(path)) if i.type == pafs.FileType.File]
            else:
                files = [info] if info.type == pafs.FileType.File else []
        files = [f for f in files if not f.base_name.startswith(("_", "."))]
        if not files:
            raise FileNotFoundError(f"no log files at {uri!r}")
        for f in files:
            # Named as Spark's text source names them (file:/path), so that a table's source_file
            # values do not depend on the engine that wrote them.
            found[f"file:{f.path}" if fs.type_name == "local" else arrow_uri(uri, f.path)] = f.size
    return sorted(found.items())


def has_log_files(uri: str, spark: SparkSession | None = None) -> bool:
    """Whether ``uri`` (a file, folder or glob) names at least one log file, by :func:`list_log_files`' rules;
    with ``spark``, as its Hadoop filesystems see it (any scheme the cluster reads: HDFS, DBFS, EMRFS...)."""
    if spark is None:
        try:
            return bool(list_log_files([uri]))
        except FileNotFoundError:
            return False
    fs, path = hadoop_path(spark, uri)
    matches = fs.globStatus(path) or []  # None for a plain path that does not exist

    def visible(status: Any) -> bool:
        return status.isFile() and not status.getPath().getName().startswith(("_", "."))

    return any(visible(m) or (m.isDirectory() and any(visible(f) for f in fs.listStatus(m.getPath()))) for m in matches)


def plan_log_splits(files: list[tuple[str, int]], split_bytes: int) -> list[LogSplit]:
    """Cut (URI, size) files into splits of at most ``split_bytes`` (compressed files stay whole)."""
    splits = []
    for uri, size in files:
        codec = codec_of(uri)
        if codec or size <= split_bytes:
            splits.append(LogSplit(uri, 0, size, codec))
        else:  # equal pieces: 80 MB at 64 MB splits makes two of 40, not 64 + 16
            step = -(-size // -(-size // split_bytes))
            splits += [LogSplit(uri, s, min(size, s + step)) for s in range(0, size, step)]
    return splits


def _lines_of(data: bytes) -> pa.StringArray:
    """The ``\n``-terminated lines of ``data`` (a trailing ``\r`` dropped) as one Arrow array, no Python loop.

    The bytes are not decoded: a line that is not UTF-8 stays as it is, for the parser to quarantine.
    """
    import numpy as np
    import pyarrow.compute as pc

    buf = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(buf == 10)
    if len(buf) and buf[-1] != 10:
        ends = np.append(ends, len(buf))  # a last line with no newline
    offsets = np.empty(len(ends) + 1, np.int64)
    offsets[0], offsets[1:] = 0, np.minimum(ends + 1, len(buf))
    lines = pa.LargeStringArray.from_buffers(len(ends), pa.py_buffer(offsets), pa.py_buffer(data))
    # Each line still holds its newline: trimmed on the bytes (ascii_rtrim never decodes).
    return pc.ascii_rtrim(lines.view(pa.large_binary()).cast(pa.binary()).view(pa.string()), "\r\n")


def iter_split_lines(
    split: LogSplit, block_bytes: int = 16 << 20, max_line_bytes: int | None = None
) -> Iterator[pa.StringArray]:  # not a generator itself: it opens the file when called
    """The lines of ``split`` in arrays of about ``block_bytes`` each (memory stays bounded).

    A split owns the lines that start in ``[start, end)``: it skips the partial line it starts in
    (the previous split reads it) and reads on past ``end`` to the end of its last line, as Hadoop's
    line reader does, so that every line is read exactly once whatever the split size.

    A line that runs on past a block keeps at most its first ``max_line_bytes`` bytes while the rest
    is read (unbounded if None): a file without newlines is not gathered whole, and a line longer
    than that is cut where it stays too long for the parser, which quarantines it as overlong.

    A compressed file that cannot be read to its end yields the whole lines before the damage, then
    raises the read error (``OSError`` or ``pyarrow.ArrowInvalid``). A file that cannot be opened
    raises at the call.
    """
    fs, path = arrow_fs(split.uri)
    raw = fs.open_input_file(path) if split.codec is None else fs.open_input_stream(path, compression=split.codec)
    return _split_lines(split, raw, block_bytes, max_line_bytes)


def _split_lines(split: LogSplit, raw: Any, block_bytes: int, max_line_bytes: int | None) -> Iterator[pa.StringArray]:
    """The generator of :func:`iter_split_lines`, over the file it opened (an error opening it is raised
    by the call, not as a read error of the stream)."""
    limit = None if split.codec else split.end
    error: Exception | None = None  # a compressed stream's read error, raised once the lines before it are out

    def read(n: int) -> bytes:
        nonlocal error
        if split.codec is None:
            return bytes(f.read(n))  # (bytes already: no copy)
        if error is not None:
            return b""
        # In pieces: a read that fails (a truncated or corrupt stream) loses only its own piece.
        parts: list[bytes] = []
        size = 0
        while size < n:
            try:
                piece = f.read(min(1 << 20, n - size))
            except (OSError, pa.ArrowInvalid) as exc:
                error = exc
                break
            if not piece:
                break
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)

    with raw as f:
        carry = b""  # the start of the line not yet ended (at most max_line_bytes of it)
        pos = line_start = split.start  # where the next read starts; where the current line starts
        skip = split.start > 0  # skip to just past the first newline at or after start - 1
        if skip:
            f.seek(split.start - 1)
            pos = split.start - 1
        while limit is None or line_start < limit:  # the line starting at line_start is ours
            block = read(1 << 16 if skip else block_bytes)
            if not block:  # end of file: the rest is our last line (it has no newline)
                if error is not None:
                    raise error  # the line it cut off is lost with it
                if carry and not skip:
                    yield _lines_of(carry)
                return
            if skip:
                nl = block.find(b"\n")
                pos += len(block) if nl < 0 else nl + 1
                if nl < 0:
                    continue
                block, line_start, skip = block[nl + 1 :], pos, False
                if not block or (limit is not None and line_start >= limit):
                    continue
            if limit is not None and pos + len(block) > limit - 1:
                # Our last line is the one holding byte limit - 1: it ends at the first newline from there.
                last = block.find(b"\n", max(0, limit - 1 - pos))
                if last >= 0:
                    yield _lines_of(carry + block[: last + 1])
                    return
            cut = block.rfind(b"\n") + 1
            if cut:
                yield _lines_of(carry + block[:cut])
                carry, line_start = block[cut:], pos + cut
                if error is not None:
                    raise error
            elif max_line_bytes is None or len(carry) < max_line_bytes:
                carry += block  # the line goes on (once cut, it is no longer copied)
            pos += len(block)
            if max_line_bytes is not None and len(carry) > max_line_bytes:
                carry = carry[:max_line_bytes]


@dataclass(frozen=True)
class StreamDamage:
    """The point where a compressed file stopped being readable; the lines before it were yielded."""

    message: str


def iter_split_blocks(
    split: LogSplit, block_bytes: int = 16 << 20, max_line_bytes: int | None = None
) -> Iterator[pa.StringArray | StreamDamage]:
    """:func:`iter_split_lines`, with a compressed file's read error yielded last as a :class:`StreamDamage`.

    A damaged compressed file (truncated, corrupt) is read as far as it goes and reported, not raised:
    raising would fail the task, every retry of it, and so the whole job. A file that cannot be opened
    (missing, no access) and a plain file's read error are still raised: a retry may read them, and
    they are no damage of the file's own.
    """
    blocks = iter_split_lines(split, block_bytes, max_line_bytes)  # opens the file: errors raise here
    read = 0
    while True:
        try:
            lines = next(blocks)
        except StopIteration:
            return
        except (OSError, pa.ArrowInvalid) as exc:
            if split.codec is None:
                raise
            yield StreamDamage(f"{split.codec} stream unreadable after {read} lines: {exc}")
            return
        read += len(lines)
        yield lines


def codec_of(uri: str) -> str | None:
    """The compression codec of a log file by its extension (:data:`LOG_CODECS`), None for plain text."""
    return next((c for ext, c in LOG_CODECS.items() if uri.endswith(ext)), None)


def python_reader_uri(uri: str) -> str | None:
    """Where a Python task can open ``uri`` (a Hadoop URI as Spark lists it), or None where it cannot.

    Local files and S3 through ``pyarrow.fs``; ``dbfs:/`` through Databricks' ``/dbfs`` mount; ``hdfs://``
    through libhdfs when this host has it (as EMR's nodes do). Checked on the driver: the executors are
    taken to be set up like it.
    """
    if arrow_readable(uri):
        return uri if _python_reaches(uri) else None
    if uri.startswith("dbfs:/"):
        mount = Path("/dbfs")
        return str(mount / uri[len("dbfs:/") :].lstrip("/")) if mount.is_dir() else None
    if uri.startswith("hdfs://"):
        try:
            pafs.FileSystem.from_uri(uri)  # loads libhdfs, connects to the name node
        except (OSError, pa.ArrowException):
            return None
        return uri
    return None


_REACHED: dict[str, bool] = {}  # bucket -> whether pyarrow reached it (see _python_reaches)


def _python_reaches(uri: str) -> bool:
    """Whether ``pyarrow.fs`` sees ``uri`` as a file: Spark may reach a bucket through Hadoop's settings
    (endpoint, credential providers) where pyarrow, with only the AWS defaults, cannot. Asked once per
    bucket (the first file of it), not once per file; local paths are not asked."""
    if "://" not in uri or uri.startswith("file:"):
        return True
    bucket = uri.split("://", 1)[1].split("/", 1)[0]
    if bucket not in _REACHED:
        try:
            fs, path = arrow_fs(uri)
            _REACHED[bucket] = bool(fs.get_file_info(path).type == pafs.FileType.File)
        except (OSError, pa.ArrowException):
            _REACHED[bucket] = False
    return _REACHED[bucket]


def _stream_files(max_line_bytes: int | None, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """``mapInArrow`` body of :func:`read_compressed_lines`: each (source_file, read_uri) row's lines."""
    names = ["value", "source_file", "damage"]
    for batch in batches:
        for source, uri in zip(*(batch.column(i).to_pylist() for i in (0, 1)), strict=True):
            for block in iter_split_blocks(LogSplit(uri, 0, 0, codec_of(uri)), max_line_bytes=max_line_bytes):
                if isinstance(block, StreamDamage):  # one row saying what went wrong
                    value, damage = pa.array([b""], pa.binary()), pa.array([block.message], pa.string())
                else:  # a block of lines (no Python object per line)
                    value, damage = block.view(pa.binary()), pa.nulls(len(block), pa.string())
                file = pa.repeat(pa.scalar(source, pa.string()), len(value))
                yield pa.RecordBatch.from_arrays([value, file, damage], names=names)


def read_compressed_lines(spark: SparkSession, files: dict[str, str], max_line_bytes: int | None) -> DataFrame:
    """Compressed logs read by Python tasks, one per file -> (``value``, ``source_file``, ``damage``).

    ``files`` maps each file's name as Spark lists it (the ``source_file`` of its rows) to where Python
    opens it (:func:`python_reader_uri`). Unlike Hadoop's codecs, which fail the task on a truncated or
    corrupt stream, a damaged file keeps the lines before the damage and adds one row whose ``damage``
    says what went wrong (``value`` empty); every other row's ``damage`` is null.
    """
    import functools

    from pyspark.sql import functions as F

    rows = spark.sparkContext.parallelize(sorted(files.items()), max(1, len(files)))
    df = spark.createDataFrame(rows, "source_file string, read_uri string")
    out = df.mapInArrow(
        functools.partial(_stream_files, max_line_bytes), "value binary, source_file string, damage string"
    )
    # Bytes into the JVM, then a string as Spark's text source makes it: a line that is not UTF-8 is
    # left for the classifier to quarantine, never rejected in transit.
    return out.select(F.col("value").cast("string").alias("value"), "source_file", "damage")
