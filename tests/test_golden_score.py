"""Golden test of the scoring job: a small world scored end to end, its outputs compared with stored ones.

The scoring stage is restructured without a change in behaviour (issue 28), and later features change
it on purpose; this test says which. A tiny world (generated, attacks and a spraying source injected
into the test days) and a committed tiny model trained on it (with the world's ip2asn tables) are
scored by the job: the first test day alone, then the second with investigators'
verdicts, one of which names a case of the first day by its id. Everything the job publishes is
compared with ``tests/golden/score/``: the scores, flagged and cases tables, each day's report page
and flagged.csv, the calibration and the case floor. Temporary paths, creation times and the
histogram image (by its hash) are normalised; floats are compared to 6 significant digits.

A change that alters the outputs on purpose rewrites them with ``IPINSIGHTS_GOLDEN=record`` (``=model``
retrains the model too) and says in its notes what changed and why.

Two runs, each with its own golden files: ``score/`` without the fused risk score (``fusion.enabled=false``:
the model's anomaly_score decides, as before issue 30, and ``risk_score`` is null) and ``score-fusion/``
with it (the job fits ``<model>.fusion.json`` on the validation day; levels, flags and the case floor on
``risk_score``). The fusion file is compared too, its fit time left out.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "score"
MODEL = GOLDEN.parent / "model"
#: The two runs: their golden folders and their extra settings.
VARIANTS = {"score": ["--fusion.enabled=false"], "score-fusion": []}
RECORD = os.environ.get("IPINSIGHTS_GOLDEN") in ("record", "model")
DAYS = ["2024-01-01", "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"]
TRAIN, VALID, TEST = DAYS[:2], DAYS[2], DAYS[3:]


def _world(root: Path) -> dict[str, Any]:
    """The events table (ingest layout: Parquet, ``dt=`` partitions), the model and its ip2asn tables.

    The model is the committed ``tests/golden/model`` (trained on this world's training days by
    :func:`_train`, with ``IPINSIGHTS_GOLDEN=model``): training in the test would tie the scoring stage's
    golden outputs to the thread pool and the trainer's float rounding, which is not what they are about.
    """
    from ipinsights.synth import SynthSpec, generate_dataset

    spec = SynthSpec(
        users=150,
        days=5,
        train_days=2,
        validation_days=1,
        attacks=60,
        validation_attacks=20,
        n_files=1,
        networks=200,
        seed=7,
        events_min=30,
        events_mean=120.0,
        inject_attacks=True,
        spraying_accounts=12,
    )
    paths = generate_dataset(root / "synth", spec)
    assert paths.events is not None
    truth = pq.read_table(paths.events)
    events = truth.select(["entity", "ip", "ip_int", "ip_version", "ts", "dt"])
    pq.write_to_dataset(events, root / "events", partition_cols=["dt"])
    tables = f"{paths.networks},{paths.networks_v6}"
    model = root / "model"
    if os.environ.get("IPINSIGHTS_GOLDEN") == "model":
        _train(truth.filter(pc.is_in(truth["dt"], pa.array(TRAIN))), tables, model)
        shutil.rmtree(MODEL, ignore_errors=True)
        shutil.copytree(model, MODEL)
    else:
        shutil.copytree(MODEL, model)
    # The second test day's attacks from random addresses (flagged, whatever the model): one of them is
    # confirmed benign by entity and /24, another's entity marked malicious.
    attacks = truth.filter(pc.and_(pc.equal(truth["dt"], TEST[1]), pc.equal(truth["kind"], "random_ip")))
    rows = sorted((r["entity"], r["ip"]) for r in attacks.to_pylist())
    (confirmed, ip), bad = rows[0], rows[-1][0]
    return {
        "events": str(root / "events"),
        "model": str(model),
        "tables": tables,
        "confirmed": (confirmed, ip.rsplit(".", 1)[0] + ".0/24"),
        "bad": bad,
    }


def _train(train: pa.Table, tables: str, model: Path) -> None:
    """The golden model: 3 epochs, fixed seeds, one thread, with the world's ip2asn tables."""
    import torch

    from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
    from ipinsights.core.entities import ENTITY_FILE, EntityStats
    from ipinsights.storage.modelfile import save_model
    from ipinsights.train.data import encode_pairs
    from ipinsights.train.trainer import train_model

    torch.set_num_threads(1)
    hp = Hyperparameters(
        num_entity_vectors=300,
        vector_dim=8,
        epochs=3,
        mini_batch_size=400,
        random_negative_sampling_rate=2,
        learning_rate=0.02,
    )
    opts = ModelOptions(ip_hash_buckets=512, ipv6_hash_buckets=512, asn_hash_buckets=128, asn_table=tables)
    enc = encode_pairs(train["entity"], train["ip"], hp.num_entity_vectors, opts.hash_seed)
    result = train_model(hp, opts, TrainOptions(num_threads=1, progress_bar="off", seed=11), enc)
    stats = EntityStats.from_entities(train["entity"], opts.hash_seed)
    save_model(result.model, model, extra_files={ENTITY_FILE: stats.to_bytes()})


def _value(v: Any) -> Any:
    """A JSON-able value, floats to 6 significant digits, times as ISO text."""
    if isinstance(v, float):
        return None if math.isnan(v) else float(f"{v:.6g}")
    if isinstance(v, dt.datetime):  # Parquet's timestamps are UTC, read back without a zone
        return (v if v.tzinfo is None else v.astimezone(dt.timezone.utc).replace(tzinfo=None)).isoformat()
    if isinstance(v, dict):
        return {k: _value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_value(x) for x in v]
    return v


def _table_lines(path: Path, keys: list[str], csv: bool = False) -> list[str]:
    """One JSON line per row of a ``dt``-partitioned Parquet table, in ``keys`` order (``csv``: a header line,
    then one JSON list of values per row: the scores are many, their columns few)."""
    rows = []
    for part in sorted(path.glob("dt=*")):
        day = part.name.removeprefix("dt=")
        for f in sorted(part.glob("*.parquet")):
            for r in pq.read_table(f).to_pylist():
                rows.append({**r, "dt": day})
    rows.sort(key=lambda r: tuple("" if r[k] is None else str(r[k]) for k in keys))
    if csv:
        names = sorted(rows[0]) if rows else []
        return [json.dumps(names), *(json.dumps(_value([r[n] for n in names])) for r in rows)]
    return [json.dumps(_value(r), sort_keys=True) for r in rows]


def _normalised(text: str, root: Path) -> str:
    """``text`` without what differs between runs: the temporary root, creation times, the fusion's fit time,
    the profile build's name, the fusion's hash, the image bytes."""
    text = text.replace(str(root), "<ROOT>")
    text = re.sub(r'"created_at": "[^"]*"', '"created_at": "<TIME>"', text)
    text = re.sub(r'"fit_seconds": [0-9.e+-]+', '"fit_seconds": "<SECONDS>"', text)
    # A hash of the fusion's coefficients, whose last bits differ between CPUs (the coefficients are compared).
    text = re.sub(r'"fusion_fingerprint": "[0-9a-f]{64}"', '"fusion_fingerprint": "<FUSION>"', text)
    text = re.sub(r"\.rows-[0-9a-f]{12}", ".rows-<BUILD>", text)  # a profile build's random name

    def png(m: re.Match[str]) -> str:
        return f"data:image/png;sha256,{hashlib.sha256(m.group(1).encode()).hexdigest()[:16]}"

    return re.sub(r"data:image/png;base64,([A-Za-z0-9+/=]+)", png, text)


def _outputs(root: Path, out: Path, model: str, runs: list[Any]) -> dict[str, str]:
    """Everything the job published, as text files by name."""
    files = {
        "scores.jsonl.gz": _table_lines(out / "scores", ["dt", "entity", "ip", "ts"], csv=True),
        "flagged.jsonl": _table_lines(out / "flagged", ["dt", "entity", "ip", "ts"]),
        "cases.jsonl": _table_lines(out / "cases", ["dt", "rank"]),
    }
    texts = {name: "\n".join(lines) + "\n" for name, lines in files.items()}
    for day in TEST:
        for name in ("report.html", "flagged.csv"):
            texts[f"{day}-{name}"] = (out / "reports" / f"dt={day}" / name).read_text(encoding="utf-8")
    sidecars = {
        name: json.loads(Path(f"{model}{name}").read_text(encoding="utf-8"))
        for name in (".calibration.json", ".cases.json", ".fusion.json")
        if Path(f"{model}{name}").exists()
    }
    texts["sidecars.json"] = json.dumps(_value(sidecars), indent=1, sort_keys=True) + "\n"
    texts["runs.json"] = json.dumps(_value(runs), indent=1, sort_keys=True) + "\n"
    return {name: _normalised(text, root) for name, text in texts.items()}


#: A decimal fraction or a number with an exponent (integers, ranks and counts, are compared as text).
_FLOAT = re.compile(r"-?\d+(?:\.\d+(?:[eE][+-]?\d+)?|[eE][+-]?\d+)")


def _same_text(got: str, want: str, rel: float = 1e-4, abs_: float = 1e-5) -> bool:
    """The same text but for the last digits of its fractional numbers. The model's float32 arithmetic
    differs in the last bits between CPUs (the vector units torch and numpy pick), and the outputs print
    scores to 8 digits: everything else (order, levels, flags, words) must be identical."""
    if got == want:
        return True
    got_parts, want_parts = _FLOAT.split(got), _FLOAT.split(want)
    if got_parts != want_parts:
        return False
    got_nums, want_nums = _FLOAT.findall(got), _FLOAT.findall(want)
    pairs = zip(got_nums, want_nums, strict=True)
    return all(math.isclose(float(a), float(b), rel_tol=rel, abs_tol=abs_) for a, b in pairs)


def _read(path: Path) -> str:
    data = path.read_bytes()
    return (gzip.decompress(data) if path.suffix == ".gz" else data).decode("utf-8")


def _write(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    # mtime 0: the same text gives the same bytes (the scores are many; the rest stays readable as text)
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


@pytest.mark.oldest_spark
@pytest.mark.spark
@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_scoring_job_outputs_match_the_golden_files(spark, tmp_path, variant):
    from ipinsights_jobs import score as score_job

    golden = GOLDEN.parent / variant
    world = _world(tmp_path)
    out = tmp_path / "out"
    args = [
        f"--model={world['model']}",
        f"--events={world['events']}",
        f"--scores={out / 'scores'}",
        f"--flagged={out / 'flagged'}",
        f"--reports={out / 'reports'}",
        f"--cases={out / 'cases'}",
        f"--train_start_date={TRAIN[0]}",
        f"--train_end_date={TRAIN[-1]}",
        f"--asn_table={world['tables']}",
        f"--calibration_start_date={VALID}",
        f"--calibration_end_date={VALID}",
        "--target-fpr",
        "0.02",
        "--arrow_batch_size=500",
        "--normal_cases_per_day=3",
        *VARIANTS[variant],
    ]
    assert score_job.main(["--date", TEST[0], *args]) == 0
    # Verdicts for the second day: the first day's top entity case confirmed benign by its id, an attacked
    # entity's /24 of the second day confirmed benign, another attacked entity marked malicious, and one
    # row that is refused (no verdict).
    first = pq.read_table(out / "cases" / f"dt={TEST[0]}").to_pylist()
    top = min((r for r in first if r["kind"] == "entity"), key=lambda r: r["rank"])
    (confirmed, subnet), bad = world["confirmed"], world["bad"]
    verdicts = tmp_path / "verdicts.csv"
    verdicts.write_text(
        "case_id,entity,network,verdict,who,when,expires,note\n"
        f"{top['case_id']},,,benign,ana,{TEST[0]},,travel confirmed\n"
        f",{confirmed},{subnet},benign,ana,{TEST[0]},,new ISP\n"
        f",{bad},,malicious,bo,{TEST[0]},,\n"
        f",{bad},AS1,,bo,{TEST[0]},,\n",
        encoding="utf-8",
    )
    assert score_job.main(["--date", TEST[1], *args, f"--verdicts={verdicts}"]) == 0
    got = _outputs(tmp_path, out, world["model"], [top["case_id"], confirmed, subnet, bad])
    if RECORD:
        golden.mkdir(parents=True, exist_ok=True)
        for old in golden.iterdir():
            old.unlink()
        for name, text in got.items():
            _write(golden / name, text)
        pytest.skip(f"golden files recorded in {golden}")
    want = {p.name: _read(p) for p in golden.iterdir()}
    assert sorted(got) == sorted(want)
    for name in sorted(want):
        if not _same_text(got[name], want[name]):
            got_lines, want_lines = got[name].splitlines(), want[name].splitlines()
            diff = next(
                (i for i, (a, b) in enumerate(zip(got_lines, want_lines, strict=False)) if not _same_text(a, b)),
                min(len(got_lines), len(want_lines)),
            )
            pytest.fail(
                f"{name} differs from the golden file at line {diff + 1} ({len(got_lines)} lines, "
                f"{len(want_lines)} expected):\n got: {got_lines[diff] if diff < len(got_lines) else '<end>'}\n"
                f"want: {want_lines[diff] if diff < len(want_lines) else '<end>'}"
            )
