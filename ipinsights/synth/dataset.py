"""A whole data set on disk: logs, labelled evaluation rows, ground truth, the world and a manifest.

Layout under ``out_dir`` (the same whether shards run here or in Spark tasks)::

    logs/access-00000.log[.gz] ...        one file per shard (spec.n_files)
    labels/test_labelled.csv               entity,ip,label,kind[,user_agent] (headerless); attacks + normal rows
    labels/validation_labelled.csv         the same for the validation days
    truth/events.parquet/part-00000.parquet ...   every login line of the logs (EVENT_SCHEMA + kind)
    world/networks.tsv                     the address plan, ip2asn-v4 format
    world/networks-v6.tsv                  its IPv6 prefixes, ip2asn-v6 format
    world/users.parquet/part-00000.parquet ...    the users (see generate_users)
    manifest.json                          spec, seed, counts

Each shard is produced by :func:`run_shard`, which only needs the spec, the address plan and its
number, and writes its own files; the driver only lays out directories, concatenates the (small)
labelled parts and writes the manifest. The parquet outputs are directories of parts, which
``pyarrow.parquet.read_table``, pandas and Spark all read as one table.

The manifest's counts include ``ipv6_events`` (IPv6 logins), ``ipv6_home_users`` (users with IPv6 at
home) and, per split and attack kind that lost any, ``<split>_dropped_<kind>``: attacks dealt to
a shard that it could not make (e.g. IPv6 kinds in a shard without IPv6 users).
"""

from __future__ import annotations

import collections
import json
import logging
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ipinsights._version import __version__
from ipinsights.core.config import config_from_dict, config_to_dict
from ipinsights.storage.files import atomic_write
from ipinsights.synth.events import attack_slots, attacks_as_events, shard_events, shard_labelled, with_kind
from ipinsights.synth.logs import lines_buffer, log_file_name, shard_log_pieces, time_ordered, write_pieces
from ipinsights.synth.plan import AddressPlan
from ipinsights.synth.spec import SynthSpec
from ipinsights.synth.world import generate_users, load_plan

__all__ = [
    "DatasetPaths",
    "generate_dataset",
    "generate_dataset_spark",
    "labelled_csv_bytes",
    "read_spec",
    "run_shard",
]

log = logging.getLogger(__name__)

_EVAL_SPLITS = ("validation", "test")
MANIFEST = "manifest.json"
_PARTS = ".parts"  # staging folder of the per-shard labelled rows, removed when they are concatenated


@dataclass(frozen=True)
class DatasetPaths:
    """Where :func:`generate_dataset` put everything."""

    root: Path
    logs: tuple[Path, ...]
    test_labelled: Path
    validation_labelled: Path
    events: Path | None  # truth/events.parquet (a directory of parts); None unless spec.write_truth
    networks: Path
    networks_v6: Path
    users: Path
    manifest: Path

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    def listing(self) -> list[str]:
        """One ``name<TAB>path`` line per output (as the generate job prints them), the logs last."""
        names = ("manifest", "test_labelled", "validation_labelled", "events", "networks", "networks_v6", "users")
        lines = [f"{name}\t{getattr(self, name)}" for name in names if getattr(self, name) is not None]
        return [*lines, f"logs\t{self.logs_dir} ({len(self.logs)} files)"]

    @classmethod
    def under(cls, root: str | Path, spec: SynthSpec) -> DatasetPaths:
        root = Path(root)
        return cls(
            root=root,
            logs=tuple(root / "logs" / log_file_name(s, spec) for s in range(spec.n_files)),
            test_labelled=root / "labels" / "test_labelled.csv",
            validation_labelled=root / "labels" / "validation_labelled.csv",
            events=root / "truth" / "events.parquet" if spec.write_truth else None,
            networks=root / "world" / "networks.tsv",
            networks_v6=root / "world" / "networks-v6.tsv",
            users=root / "world" / "users.parquet",
            manifest=root / MANIFEST,
        )


def read_spec(root: str | Path) -> SynthSpec:
    """The spec that the data set under ``root`` was generated with (from its manifest)."""
    manifest = json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    return config_from_dict(SynthSpec, manifest["spec"])


def labelled_csv_bytes(table: pa.Table) -> bytes:
    """Headerless ``entity,ip,label,kind`` lines, plus the quoted ``user_agent`` where the rows have one
    (``devices: realistic``; empty when unknown). Entities and kinds never hold commas or quotes."""
    label = pc.cast(table["label"], pa.string())
    fields = [table["entity"], table["ip"], label, table["kind"]]
    if "user_agent" in table.column_names:
        quoted = pc.replace_substring(table["user_agent"], '"', '""')
        fields.append(pc.if_else(pc.is_valid(quoted), pc.binary_join_element_wise('"', quoted, '"', ""), ""))
    parts = [part for field in fields for part in (field, ",")][:-1]
    lines = pc.binary_join_element_wise(*parts, "\n", "")
    return lines_buffer(lines.combine_chunks()).to_pybytes() if table.num_rows else b""


def run_shard(out_dir: str | Path, spec: SynthSpec, plan: AddressPlan, shard: int) -> dict[str, Any]:
    """Generate and write everything of one shard; returns its counts (small, JSON-able)."""
    out = DatasetPaths.under(out_dir, spec)
    users = generate_users(plan, spec, shard)
    events = shard_events(plan, spec, users, shard)
    labelled = shard_labelled(plan, spec, users, events, shard, _EVAL_SPLITS)
    truth = with_kind(events)
    if spec.inject_attacks:
        # The test days' only: the validation days stay normal traffic, which calibration takes them for.
        test = labelled["test"]
        truth = pa.concat_tables([truth, attacks_as_events(spec, test.filter(pc.not_equal(test["kind"], "normal")))])
    truth = truth.take(pc.sort_indices(truth, [("ts", "ascending")]))
    pieces, counts = shard_log_pieces(spec, time_ordered(truth), shard)
    write_pieces(out.logs[shard], pieces, spec)
    part = f"part-{shard:05d}.parquet"
    pq.write_table(users, out.users / part)
    if out.events is not None:
        pq.write_table(truth, out.events / part)
    for split, table in labelled.items():
        (out.root / "labels" / _PARTS / f"{split}-{shard:05d}.csv").write_bytes(labelled_csv_bytes(table))
        made = {k["values"]: k["counts"] for k in pc.value_counts(table["kind"]).to_pylist()}
        counts.update({f"{split}_{kind}": count for kind, count in made.items()})
        dealt = collections.Counter(spec.attack_kinds[i] for i in attack_slots(spec, split, shard).tolist())
        counts.update({f"{split}_dropped_{k}": c - made.get(k, 0) for k, c in dealt.items() if c > made.get(k, 0)})
    counts.update(
        users=users.num_rows,
        events=events.num_rows,
        ipv6_events=int(pc.sum(pc.equal(events["ip_version"], 6)).as_py() or 0),
        ipv6_home_users=int(pc.sum(pc.greater_equal(users["home_v6"], 0)).as_py() or 0),
    )
    return counts


def generate_dataset(out_dir: str | Path, spec: SynthSpec, overwrite: bool = False) -> DatasetPaths:
    """Generate the whole data set of ``spec`` under ``out_dir`` here, shard after shard (memory: one shard)."""
    plan = _prepare(out_dir, spec, overwrite)
    stats = [run_shard(out_dir, spec, plan, s) for s in range(spec.n_files)]
    return _finish(out_dir, spec, plan, stats)


def generate_dataset_spark(spark, out_dir: str | Path, spec: SynthSpec, overwrite: bool = False) -> DatasetPaths:
    """Like :func:`generate_dataset`, one Spark task per shard; the tasks write the files themselves.

    ``out_dir`` must be a path every executor can write (local mode, or a shared file system); the
    address plan travels as a broadcast variable; only per-shard counts come back to the driver.
    Output is byte-identical to :func:`generate_dataset` for the same spec.
    """
    plan = _prepare(out_dir, spec, overwrite)
    sc = spark.sparkContext
    plan_bc = sc.broadcast(plan)
    task = partial(_spark_task, str(Path(out_dir).resolve()), spec, plan_bc)
    stats = sc.parallelize(range(spec.n_files), spec.n_files).map(task).collect()
    plan_bc.unpersist()
    return _finish(out_dir, spec, plan, stats)


def _spark_task(out_dir: str, spec: SynthSpec, plan_bc, shard: int) -> dict[str, Any]:
    return run_shard(out_dir, spec, plan_bc.value, shard)


def _prepare(out_dir: str | Path, spec: SynthSpec, overwrite: bool) -> AddressPlan:
    """Check/clear ``out_dir``, make its folders and load the address plan."""
    out = DatasetPaths.under(out_dir, spec)
    ours = [out.root / d for d in ("logs", "labels", "truth", "world")] + [out.manifest]
    present = [p for p in ours if p.exists()]
    if present and not overwrite:
        raise FileExistsError(f"{out.root} already holds a data set ({present[0].name}); pass overwrite=True")
    for p in present:  # only what we write ourselves: never the user's other files
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    folders = [out.logs_dir, out.root / "labels" / _PARTS, out.users, out.networks.parent]
    folders += [out.events] if out.events is not None else []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return load_plan(spec)


def _finish(out_dir: str | Path, spec: SynthSpec, plan: AddressPlan, stats: list[dict[str, Any]]) -> DatasetPaths:
    """Concatenate the labelled parts in shard order, write the plan and the manifest."""
    out = DatasetPaths.under(out_dir, spec)
    parts = out.root / "labels" / _PARTS
    for split, path in (("validation", out.validation_labelled), ("test", out.test_labelled)):
        with atomic_write(path, "wb") as fh:
            for s in range(spec.n_files):
                fh.write((parts / f"{split}-{s:05d}.csv").read_bytes())
    shutil.rmtree(parts)
    plan.to_ip2asn_tsv(out.networks)
    plan.to_ip2asn_v6_tsv(out.networks_v6)
    totals: dict[str, int] = {}
    for shard_stats in stats:
        for key, value in shard_stats.items():
            totals[key] = totals.get(key, 0) + int(value)
    totals["lines"] = totals.get("login_lines", 0) + totals.get("noise_lines", 0) + totals.get("junk_lines", 0)
    totals["networks"] = len(plan)
    manifest = {
        "generator": "ipinsights.synth",
        "version": __version__,
        "seed": spec.seed,
        "spec": config_to_dict(spec),
        "counts": dict(sorted(totals.items())),
        "days": {split: list(spec.split_days(split)) for split in ("train", "validation", "test")},
        "files": {
            "logs": [p.relative_to(out.root).as_posix() for p in out.logs],
            "test_labelled": out.test_labelled.relative_to(out.root).as_posix(),
            "validation_labelled": out.validation_labelled.relative_to(out.root).as_posix(),
            "events": out.events.relative_to(out.root).as_posix() if out.events else None,
            "networks": out.networks.relative_to(out.root).as_posix(),
            "networks_v6": out.networks_v6.relative_to(out.root).as_posix(),
            "users": out.users.relative_to(out.root).as_posix(),
        },
    }
    with atomic_write(out.manifest, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    log.info(
        "generated %d lines (%d login events) for %d users in %s",
        totals["lines"],
        totals.get("events", 0),
        spec.users,
        out.root,
    )
    return out
