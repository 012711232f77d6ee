"""IP and entity embeddings to Parquet, for clustering and downstream models, in bounded memory.

Output columns: ``ip`` (dotted quad) or ``entity`` (string), and ``embedding`` (fixed-size list of
float32, ``vector_dim`` long). Rows go out in batches through one ``ParquetWriter`` (a row group per
batch), so a /8 (16.7M addresses) takes the memory of one batch. The file is written under a
temporary name and renamed at the end: an error part-way (a bad line in an input file, the address
limit) leaves no half-written output.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ipinsights.core.ip import ipv4_to_str, parse_ipv4

if TYPE_CHECKING:
    from ipinsights.score.scorer import Scorer

__all__ = [
    "DEFAULT_BATCH",
    "DEFAULT_MAX_ADDRESSES",
    "ExportError",
    "export_embeddings",
    "export_requested",
    "ip_batches",
    "parse_ranges",
    "read_lines",
]

log = logging.getLogger(__name__)

#: A /8: large enough for any one network, small enough that a typo (0.0.0.0/0) is refused, not run.
DEFAULT_MAX_ADDRESSES = 1 << 24
DEFAULT_BATCH = 65_536


class ExportError(ValueError):
    """An input that cannot be exported: a bad range or line, or more addresses than the limit."""


def parse_ranges(specs: Iterable[str]) -> list[ipaddress.IPv4Network]:
    """CIDR ranges (``10.0.0.0/24``; a bare address is a /32). Host bits set are refused: ambiguous."""
    nets = []
    for spec in specs:
        try:
            nets.append(ipaddress.IPv4Network(spec.strip()))
        except ValueError as exc:
            raise ExportError(f"invalid IPv4 range {spec!r}: {exc}") from None
    return nets


def read_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a text file, without line ends; blank lines and ``#`` comments skipped."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            for lineno, line in enumerate(fh, start=1):
                text = line.rstrip("\r\n")
                if text.strip() and not text.lstrip().startswith("#"):
                    yield lineno, text
    except UnicodeDecodeError as exc:
        raise ExportError(f"{path}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc.strerror})") from None


def _range_batches(net: ipaddress.IPv4Network, batch: int) -> Iterator[np.ndarray]:
    start, n = int(net.network_address), net.num_addresses
    for s in range(0, n, batch):
        yield np.arange(start + s, start + min(s + batch, n), dtype=np.uint32)


def ip_batches(
    ranges: Iterable[ipaddress.IPv4Network] = (),
    ip_file: str | Path | None = None,
    *,
    batch: int = DEFAULT_BATCH,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> Iterator[np.ndarray]:
    """``uint32`` address batches: the ranges, then the file's lines (addresses or CIDR ranges) in order.

    Raises :class:`ExportError` as soon as the running total passes ``max_addresses`` (ranges given
    up front are checked before anything is produced) or a line is neither an address nor a range.
    """
    ranges = list(ranges)
    total = sum(n.num_addresses for n in ranges)
    if total > max_addresses:
        raise ExportError(f"the ranges hold {total:,} addresses, over the limit of {max_addresses:,} (--max-addresses)")
    for net in ranges:
        yield from _range_batches(net, batch)
    if ip_file is None:
        return
    pending: list[str] = []
    pending_lines: list[int] = []

    def flush() -> np.ndarray:
        parsed = parse_ipv4(pending)
        if parsed.n_invalid:
            bad = int(parsed.invalid_rows(1)[0])
            raise ExportError(
                f"{ip_file}:{pending_lines[bad]}: {pending[bad]!r} is neither an IPv4 address nor a CIDR range"
            )
        pending.clear()
        pending_lines.clear()
        return parsed.value

    for lineno, text in read_lines(ip_file):
        text = text.strip()
        if "/" in text:
            if pending:
                yield flush()
            try:
                (net,) = parse_ranges([text])
            except ExportError as exc:
                raise ExportError(f"{ip_file}:{lineno}: {exc}") from None
            total += net.num_addresses
            if total > max_addresses:
                raise ExportError(
                    f"{ip_file}:{lineno}: over the limit of {max_addresses:,} addresses (--max-addresses)"
                )
            yield from _range_batches(net, batch)
            continue
        total += 1
        if total > max_addresses:
            raise ExportError(f"{ip_file}:{lineno}: over the limit of {max_addresses:,} addresses (--max-addresses)")
        pending.append(text)
        pending_lines.append(lineno)
        if len(pending) >= batch:
            yield flush()
    if pending:
        yield flush()


def _schema(key: str, dim: int, model: str) -> pa.Schema:
    return pa.schema(
        [
            pa.field(key, pa.string(), nullable=False),
            pa.field("embedding", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={"ipinsights.core.model": model, "ipinsights.kind": key},
    )


def _write(out: str | Path, schema: pa.Schema, batches: Iterator[tuple[pa.Array, np.ndarray]]) -> int:
    """Write (keys, vectors) batches to ``out`` atomically; returns the row count."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for keys, vectors in batches:
                dim = schema.field("embedding").type.list_size
                emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
                writer.write_batch(pa.record_batch([keys, emb], schema=schema))
                rows += len(keys)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def export_embeddings(
    scorer: Scorer,
    out: str | Path,
    *,
    ips: Iterable[np.ndarray] | None = None,
    entities: Iterable[str] | None = None,
    batch: int = DEFAULT_BATCH,
) -> int:
    """Write IP embeddings (``ips``: ``uint32`` batches, e.g. from :func:`ip_batches`) or entity embeddings.

    Exactly one of ``ips`` and ``entities`` is given. Vectors come from the :class:`~ipinsights.score.scorer.Scorer`.
    """
    if (ips is None) == (entities is None):
        raise ValueError("give exactly one of ips and entities")
    model = str(scorer.bundle.path)
    if ips is not None:

        def ip_rows() -> Iterator[tuple[pa.Array, np.ndarray]]:
            for values in ips:
                text = ipv4_to_str(values)
                yield text, scorer.ip_embedding(text)

        return _write(out, _schema("ip", scorer.vector_dim, model), ip_rows())

    assert entities is not None  # exactly one of ips and entities is given (checked above)

    def entity_rows() -> Iterator[tuple[pa.Array, np.ndarray]]:
        chunk: list[str] = []
        for e in entities:
            chunk.append(e)
            if len(chunk) >= batch:
                yield pa.array(chunk, pa.string()), scorer.entity_embedding(chunk)
                chunk = []
        if chunk:
            yield pa.array(chunk, pa.string()), scorer.entity_embedding(chunk)

    return _write(out, _schema("entity", scorer.vector_dim, model), entity_rows())


def export_requested(
    scorer: Scorer,
    out: str | Path,
    *,
    ip_ranges: Sequence[str] = (),
    ip_file: str | Path | None = None,
    entity_file: str | Path | None = None,
    entities_out: str | Path | None = None,
    batch: int = DEFAULT_BATCH,
    max_addresses: int = DEFAULT_MAX_ADDRESSES,
) -> Iterator[tuple[str, str | Path, int]]:
    """Export what was asked, one file at a time, yielding ``(kind, file, rows)`` after each is written.

    IP embeddings (``ip_ranges`` as CIDR text and the lines of ``ip_file``) go to ``out``; entity
    embeddings (the lines of ``entity_file``) to ``entities_out``, or to ``out`` when no IPs are asked.
    Ranges are checked before anything is written.
    """
    ranges = parse_ranges(ip_ranges)
    want_ips = bool(ranges or ip_file)
    if want_ips and entity_file is not None and entities_out is None:
        raise ExportError("exporting IPs and entities together: give a second output for the entities")
    todo: list[tuple[str, str | Path, dict[str, Iterable]]] = []
    if want_ips:
        todo.append(("ip", out, {"ips": ip_batches(ranges, ip_file, batch=batch, max_addresses=max_addresses)}))
    if entity_file is not None:
        entities = (text for _, text in read_lines(entity_file))
        todo.append(("entity", entities_out or out, {"entities": entities}))
    for kind, path, source in todo:
        t0 = time.perf_counter()
        rows = export_embeddings(scorer, path, batch=batch, **source)
        log.info("%s embeddings: %d rows in %.1f s", kind, rows, time.perf_counter() - t0)
        yield kind, path, rows
