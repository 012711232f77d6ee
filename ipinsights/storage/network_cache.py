"""The networks cache: downloaded ip2asn tables (and MaxMind's GeoLite2 CSVs), every version kept by its
checksum and date, so that a model finds the very table it was trained with after newer ones arrive.

Layout (a local folder or a URI: ``s3://bucket/networks`` serves a cluster)::

    CACHE/index.json                     the versions: id, source, file, sha256, bytes, url, fetched_at,
                                         last_modified (the server's, when given), fingerprint, ranges
    CACHE/<id>/<file>                    one folder per version, e.g.
                                         ip2asn-20240601-0123456789ab/ip2asn-combined.tsv.gz

``<id>`` is ``<source>-<date>-<first 12 hex digits of the file's sha256>``, the date being the
server's Last-Modified, else the day of the fetch. A download goes to a local temporary file and is
put into the cache only once verified: an ip2asn table must be intact gzip that
:func:`ipinsights.core.asn.read_ip2asn` reads; a GeoLite2 zip must match the sha256 MaxMind publishes
beside it and be an intact zip holding its blocks CSVs. A download that fails either leaves the cache
as it was (:class:`DownloadError`). Content already in the cache (the same sha256) is not stored twice.

``model.asn_table: auto`` (:func:`resolve_asn_table`) trains with the newest ip2asn version; the model
records its path and fingerprint, and :func:`find_table` finds a version by that fingerprint when the
recorded path is gone (a model copied to another machine, a cache that moved).

The index is rewritten whole (atomically) after each new version, re-read just before: run one fetch
at a time per cache (a daily scheduled job does).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from ipinsights._version import __version__
from ipinsights.core.asn import load_asn_table
from ipinsights.core.config import ModelOptions
from ipinsights.core.errors import DataFormatError, UsageError
from ipinsights.storage.files import (
    absolute_uri,
    cache_root,
    is_file,
    is_local,
    join_uri,
    local_path,
    publish_dir,
    read_bytes,
    write_bytes,
)

__all__ = [
    "AUTO",
    "CACHE_ENV",
    "FETCH_COMMAND",
    "IP2ASN",
    "IP2ASN_URL",
    "MAXMIND_EDITIONS",
    "MAXMIND_URL",
    "CacheError",
    "DownloadError",
    "Fetched",
    "NetworkCache",
    "TableVersion",
    "default_cache",
    "fetch_geolite2",
    "fetch_ip2asn",
    "find_table",
    "resolve_asn_table",
]

log = logging.getLogger(__name__)

#: ``model.asn_table: auto``: the newest ip2asn table of the cache.
AUTO = "auto"
#: The command that fills the cache (named in every warning about an empty or old one).
FETCH_COMMAND = "ipinsights networks fetch"
#: Where the cache is unless a flag names it: this variable, else ``<user cache>/ipinsights/networks``.
CACHE_ENV = "IPINSIGHTS_NETWORKS_CACHE"
#: The source name of iptoasn.com's tables (the only source ``auto`` picks: it is what ``asn_table`` reads).
IP2ASN = "ip2asn"
IP2ASN_URL = "https://iptoasn.com/data/ip2asn-combined.tsv.gz"
#: MaxMind's documented download URL; ``suffix=zip.sha256`` gives the zip's sha256.
MAXMIND_URL = (
    "https://download.maxmind.com/app/geoip_download?edition_id={edition}&license_key={license_key}&suffix={suffix}"
)
#: The GeoLite2 editions fetched with a license key, and the header each blocks CSV starts with.
MAXMIND_EDITIONS = {
    "GeoLite2-ASN-CSV": "network,autonomous_system_number,autonomous_system_organization",
    "GeoLite2-Country-CSV": "network,geoname_id,registered_country_geoname_id",
}
INDEX = "index.json"
INDEX_FORMAT = "ipinsights-networks-cache"
_CHUNK = 1 << 20


class CacheError(UsageError):
    """The cache's index cannot be read (the message names the file and what is wrong)."""


class DownloadError(Exception):
    """A download failed or did not verify; nothing was added to the cache."""


def default_cache() -> str:
    """``$IPINSIGHTS_NETWORKS_CACHE``, else ``networks`` in the user's cache (``$IPINSIGHTS_CACHE_DIR``,
    ``$XDG_CACHE_HOME/ipinsights`` or ``~/.cache/ipinsights``)."""
    return os.environ.get(CACHE_ENV) or str(cache_root() / "networks")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class TableVersion:
    """One version of a source in the cache (a row of ``index.json``)."""

    id: str
    source: str  # ip2asn, or a GeoLite2 edition (GeoLite2-ASN-CSV)
    file: str  # its name inside the version's folder
    sha256: str
    bytes: int
    url: str  # where it came from (a license key blanked out)
    fetched_at: str  # ISO 8601, UTC
    last_modified: str | None = None  # the server's Last-Modified, when it sent one
    fingerprint: str | None = None  # an ip2asn table's AsnTable.fingerprint (what a model records)
    ranges: int | None = None  # an ip2asn table's routed ranges

    @property
    def date(self) -> dt.datetime:
        """When the data is from: the server's Last-Modified, else when it was fetched."""
        return _parse_iso(self.last_modified or self.fetched_at)

    def age_days(self, now: dt.datetime | None = None) -> float:
        return ((now or _now()) - self.date).total_seconds() / 86400

    @classmethod
    def from_dict(cls, row: Mapping[str, Any], where: str) -> TableVersion:
        names = {f.name for f in fields(cls)}
        try:
            version = cls(**{k: v for k, v in row.items() if k in names})
            version.date  # noqa: B018 - checks the dates parse
        except (TypeError, ValueError) as exc:
            raise CacheError(f"{where}: a version is malformed ({exc}): {dict(row)}") from None
        return version


@dataclass(frozen=True)
class Fetched:
    """What a fetch did: the version now holding the content, and whether it is new to the cache."""

    version: TableVersion
    added: bool
    path: str  # where the version's file is (a path or URI)


class NetworkCache:
    """The cache at ``root`` (a path or URI; default :func:`default_cache`)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = absolute_uri(str(root) if root is not None else default_cache())

    @property
    def index_uri(self) -> str:
        return join_uri(self.root, INDEX)

    def versions(self, source: str | None = None) -> list[TableVersion]:
        """The versions (of ``source``), oldest first (by date, then fetch time)."""
        try:
            text = read_bytes(self.index_uri)
        except FileNotFoundError:
            return []
        try:
            index = json.loads(text)
            rows = index["versions"]
            if index.get("format") != INDEX_FORMAT or not isinstance(rows, list):
                raise ValueError(f"not an {INDEX_FORMAT} index")
        except (ValueError, KeyError, TypeError) as exc:
            raise CacheError(f"{self.index_uri}: not a networks cache index ({exc})") from None
        out = [TableVersion.from_dict(r, self.index_uri) for r in rows]
        return sorted(
            (v for v in out if source is None or v.source == source), key=lambda v: (v.date, v.fetched_at, v.id)
        )

    def path(self, version: TableVersion) -> str:
        """Where ``version``'s file is (a path or URI)."""
        return join_uri(self.root, version.id, version.file)

    def newest(self, source: str = IP2ASN) -> TableVersion | None:
        """The newest version of ``source`` whose file is present, or None."""
        return next((v for v in reversed(self.versions(source)) if is_file(self.path(v))), None)

    def with_fingerprint(self, fingerprint: str) -> TableVersion | None:
        """The newest ip2asn version with this table fingerprint whose file is present, or None."""
        found = (v for v in reversed(self.versions(IP2ASN)) if v.fingerprint == fingerprint)
        return next((v for v in found if is_file(self.path(v))), None)

    def _same_content(self, source: str, sha256: str) -> TableVersion | None:
        return next((v for v in self.versions(source) if v.sha256 == sha256 and is_file(self.path(v))), None)

    def _add(self, file: Path, version: TableVersion) -> str:
        """Put the verified local ``file`` in place as ``version``'s folder, then list it in the index."""
        folder = join_uri(self.root, version.id)
        if is_local(folder):
            root = local_path(self.root)
            root.mkdir(parents=True, exist_ok=True)
            stage = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))  # a sibling: the folder appears by a rename
            try:
                shutil.move(file, stage / version.file)
                publish_dir(stage, folder)
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        else:
            publish_dir(file.parent, folder)  # the download's own temporary folder: that file alone
        rows = [v for v in self.versions() if v.id != version.id] + [version]  # re-read: another fetch's too
        index = {"format": INDEX_FORMAT, "format_version": 1, "versions": [asdict(v) for v in rows]}
        write_bytes(self.index_uri, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
        return self.path(version)


def _redact(url: str) -> str:
    """``url`` with a license key blanked out (it goes into logs, errors and the index)."""
    return re.sub(r"(license_key=)[^&]*", r"\1***", url)


@dataclass(frozen=True)
class _Download:
    sha256: str
    bytes: int
    last_modified: str | None


def _download(url: str, dst: Path, timeout: float) -> _Download:
    """Stream ``url`` into ``dst``, hashing it; a short body (against Content-Length) is an error."""
    request = urllib.request.Request(url, headers={"User-Agent": f"ipinsights/{__version__}"})
    shown = _redact(url)
    h = hashlib.sha256()
    size = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(dst, "wb") as out:
            expected = response.headers.get("Content-Length")
            modified = response.headers.get("Last-Modified")
            while block := response.read(_CHUNK):
                h.update(block)
                out.write(block)
                size += len(block)
    except urllib.error.HTTPError as exc:
        hint = " (is the license key right?)" if exc.code in (401, 403) and "license_key" in url else ""
        raise DownloadError(f"{shown}: HTTP {exc.code} {exc.reason}{hint}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:  # unreachable, timeout, cut
        raise DownloadError(f"{shown}: download failed: {getattr(exc, 'reason', exc)}") from None
    if expected is not None and expected.isdigit() and int(expected) != size:
        raise DownloadError(f"{shown}: got {size} bytes of the {expected} announced (the download was cut short)")
    last_modified = None
    if modified:
        try:
            last_modified = _iso(email.utils.parsedate_to_datetime(modified))
        except (TypeError, ValueError):
            log.warning("%s: ignoring an unreadable Last-Modified header %r", shown, modified)
    return _Download(h.hexdigest(), size, last_modified)


def _file_name(url: str, default: str) -> str:
    """The last path segment of ``url`` when it is a plain file name, else ``default``."""
    name = urllib.parse.urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) else default


def _version_id(source: str, date: str, sha256: str) -> str:
    return f"{source}-{date[:10].replace('-', '')}-{sha256[:12]}"


def fetch_ip2asn(
    cache: NetworkCache, url: str = IP2ASN_URL, timeout: float = 120.0, now: dt.datetime | None = None
) -> Fetched:
    """Download an ip2asn table (iptoasn.com's ``ip2asn-combined.tsv.gz`` by default) into ``cache``.

    Verified before it goes in: gzip that decompresses whole (a truncated or corrupt file fails its
    CRC) and an ip2asn table that :func:`~ipinsights.core.asn.read_ip2asn` reads (every line, no
    overlaps, some routed range). Raises :class:`DownloadError` otherwise, leaving the cache as it was.
    """
    fetched_at = _iso(now or _now())
    with tempfile.TemporaryDirectory(prefix="ipinsights-fetch-") as tmp:
        name = _file_name(url, "ip2asn.tsv.gz")
        file = Path(tmp) / name
        got = _download(url, file, timeout)
        if (same := cache._same_content(IP2ASN, got.sha256)) is not None:
            log.info("%s: unchanged (sha256 %s…): already in the cache as %s", _redact(url), got.sha256[:12], same.id)
            return Fetched(same, False, cache.path(same))
        with open(file, "rb") as fh:
            gzipped = fh.read(2) == b"\x1f\x8b"
        if name.endswith(".gz") and not gzipped:
            raise DownloadError(f"{_redact(url)}: not gzip data (the server sent {got.bytes} bytes of something else)")
        if gzipped and not name.endswith(".gz"):
            file = file.rename(file.with_name(name + ".gz"))
        try:
            table = load_asn_table(str(file))
        except DataFormatError as exc:  # a truncated or corrupt gzip, or lines that are no ip2asn table
            raise DownloadError(f"{_redact(url)}: the download is not a readable ip2asn table: {exc}") from None
        version = TableVersion(
            id=_version_id(IP2ASN, got.last_modified or fetched_at, got.sha256),
            source=IP2ASN,
            file=file.name,
            sha256=got.sha256,
            bytes=got.bytes,
            url=_redact(url),
            fetched_at=fetched_at,
            last_modified=got.last_modified,
            fingerprint=table.fingerprint,
            ranges=len(table),
        )
        path = cache._add(file, version)
    log.info("%s: %d ranges (fingerprint %s…) added as %s", _redact(url), len(table), table.fingerprint[:12], path)
    return Fetched(version, True, path)


def fetch_geolite2(
    cache: NetworkCache,
    license_key: str,
    editions: Iterable[str] = tuple(MAXMIND_EDITIONS),
    url: str = MAXMIND_URL,
    timeout: float = 300.0,
    now: dt.datetime | None = None,
) -> list[Fetched]:
    """Download MaxMind's GeoLite2 CSV zips (``editions``) into ``cache`` with a license key.

    ``url`` is a template with ``{edition}``, ``{license_key}`` and ``{suffix}``. Each zip must match
    the sha256 MaxMind publishes for it (``suffix=zip.sha256``), be an intact zip (every member's CRC)
    and hold the edition's IPv4 and IPv6 blocks CSVs; one already in the cache (that sha256) is not
    downloaded again. Raises :class:`DownloadError` at the first edition that fails (the editions
    before it stay: each was verified on its own).
    """
    out = []
    for edition in editions:
        if edition not in MAXMIND_EDITIONS:
            raise UsageError(f"unknown GeoLite2 edition {edition!r}: one of {', '.join(MAXMIND_EDITIONS)}")
        out.append(_fetch_edition(cache, edition, license_key, url, timeout, _iso(now or _now())))
    return out


def _fetch_edition(
    cache: NetworkCache, edition: str, license_key: str, template: str, timeout: float, fetched_at: str
) -> Fetched:
    def url(suffix: str) -> str:
        return template.format(edition=edition, license_key=urllib.parse.quote(license_key, safe=""), suffix=suffix)

    with tempfile.TemporaryDirectory(prefix="ipinsights-fetch-") as tmp:
        checksum_file = Path(tmp) / "sha256"
        _download(url("zip.sha256"), checksum_file, timeout)
        line = checksum_file.read_text(encoding="utf-8", errors="replace").strip()
        m = re.fullmatch(r"([0-9a-fA-F]{64})(?:\s+\*?(\S+))?", line.splitlines()[0].strip() if line else "")
        if m is None:
            raise DownloadError(f"{_redact(url('zip.sha256'))}: not a sha256 checksum line: {line[:120]!r}")
        published, name = m.group(1).lower(), m.group(2) or f"{edition}.zip"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*\.zip", name):
            name = f"{edition}.zip"
        if (same := cache._same_content(edition, published)) is not None:
            log.info("%s: unchanged (sha256 %s…): already in the cache as %s", edition, published[:12], same.id)
            return Fetched(same, False, cache.path(same))
        checksum_file.unlink()
        file = Path(tmp) / name
        got = _download(url("zip"), file, timeout)
        if got.sha256 != published:
            raise DownloadError(
                f"{_redact(url('zip'))}: checksum mismatch: the download's sha256 is {got.sha256}, MaxMind publishes "
                f"{published} (a corrupt or cut download); the cache is unchanged"
            )
        _check_geolite2_zip(file, edition, _redact(url("zip")))
        version = TableVersion(
            id=_version_id(edition, got.last_modified or fetched_at, got.sha256),
            source=edition,
            file=name,
            sha256=got.sha256,
            bytes=got.bytes,
            url=_redact(url("zip")),
            fetched_at=fetched_at,
            last_modified=got.last_modified,
        )
        path = cache._add(file, version)
    log.info("%s: added as %s", edition, path)
    return Fetched(version, True, path)


def _check_geolite2_zip(file: Path, edition: str, shown: str) -> None:
    """An intact zip holding the edition's IPv4 and IPv6 blocks CSVs, each with its header."""
    header = MAXMIND_EDITIONS[edition]
    try:
        with zipfile.ZipFile(file) as z:
            if (bad := z.testzip()) is not None:
                raise DownloadError(f"{shown}: {bad} in the zip is corrupt (CRC mismatch)")
            for family in ("IPv4", "IPv6"):
                members = [n for n in z.namelist() if n.endswith(f"-Blocks-{family}.csv")]
                if not members:
                    raise DownloadError(f"{shown}: the zip holds no *-Blocks-{family}.csv ({edition})")
                with z.open(members[0]) as fh:
                    first = fh.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
                if not first.startswith(header):
                    raise DownloadError(f"{shown}: {members[0]} starts {first[:80]!r}, expected {header!r}")
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DownloadError(f"{shown}: not an intact zip: {exc}") from None


def _cache_hint(root: str) -> str:
    return f"run `{FETCH_COMMAND}` (cache {root}; --cache or ${CACHE_ENV} to put it elsewhere)"


def resolve_asn_table(
    opts: ModelOptions, cache: NetworkCache | None = None, now: dt.datetime | None = None
) -> tuple[ModelOptions, dict[str, Any]]:
    """``opts`` with ``asn_table: auto`` made the path of the cache's newest ip2asn table, and what to
    record in the model (``{"asn_table_version": {...}}``: the version's id, sha256, fingerprint and
    cache); other settings unchanged, with nothing to record.

    With no table in the cache, the model trains without one (prefixes only), with a warning naming
    the command that fetches one; with a table older than ``opts.asn_table_max_age_days`` (0: never
    warn), a warning too. Done once, where a run starts (the ranks get the resolved path).
    """
    if opts.asn_table is None or opts.asn_table.strip() != AUTO:
        return opts, {}
    cache = cache or NetworkCache()
    version = cache.newest(IP2ASN)
    if version is None:
        log.warning(
            "model.asn_table: auto: the networks cache holds no ip2asn table, so this model is trained on address "
            "prefixes alone; %s",
            _cache_hint(cache.root),
        )
        return replace(opts, asn_table=None), {}
    age = version.age_days(now)
    if opts.asn_table_max_age_days and age > opts.asn_table_max_age_days:
        log.warning(
            "model.asn_table: auto: the newest ip2asn table, %s, is %.0f days old (model.asn_table_max_age_days=%d); "
            "%s for a current one",
            version.id,
            age,
            opts.asn_table_max_age_days,
            _cache_hint(cache.root),
        )
    path = cache.path(version)
    log.info("model.asn_table: auto: %s (%s, %d ranges)", path, version.id, version.ranges or 0)
    record = {"id": version.id, "sha256": version.sha256, "fingerprint": version.fingerprint, "cache": cache.root}
    return replace(opts, asn_table=path), {"asn_table_version": record}


def find_table(fingerprint: str, caches: Sequence[str | None] = ()) -> str | None:
    """The path of a cached ip2asn table with ``fingerprint``: in ``caches`` (e.g. the one a model records),
    then the default cache; None where none holds it (or a cache cannot be read: this is a fallback)."""
    seen = set()
    for root in [*caches, default_cache()]:
        if not root or root in seen:
            continue
        seen.add(root)
        cache = NetworkCache(root)
        try:
            version = cache.with_fingerprint(fingerprint)
        except (OSError, ValueError) as exc:  # an unreadable index or store: look in the next
            log.warning("networks cache %s: %s", root, exc)
            continue
        if version is not None:
            return cache.path(version)
    return None
