"""``ipinsights export-embeddings``: Parquet of IP and entity vectors, streamed, bounded, checked."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ipinsights.score.scorer import Scorer
from ipinsights.serve.export import ExportError, ip_batches, parse_ranges
from ipinsights_jobs import export_embeddings


@pytest.fixture(scope="module")
def model_dir(toy_model):
    return toy_model


@pytest.fixture(scope="module")
def scorer(model_dir):
    return Scorer.load(model_dir)


def test_ip_range_and_file(model_dir, scorer, tmp_path):
    ips = tmp_path / "ips.txt"
    ips.write_text("# addresses\n192.0.2.7\n\n198.51.100.0/30\r\n203.0.113.9\n")
    out = tmp_path / "out" / "ips.parquet"
    argv = ["--model", str(model_dir), "--output", str(out), "--ip-range", "10.1.0.0/16", "10.2.3.4", "--ips", str(ips)]
    assert export_embeddings.main([*argv, "--batch-size", "10000"]) == 0
    f = pq.ParquetFile(out)
    assert f.metadata.num_rows == 65536 + 1 + 1 + 4 + 1
    assert f.metadata.num_row_groups > 6  # written in batches, not as one table
    t = f.read()
    assert t.schema.field("embedding").type == pa.list_(pa.float32(), scorer.vector_dim)
    col = t["ip"].to_pylist()
    assert col[:2] == ["10.1.0.0", "10.1.0.1"] and col[65535] == "10.1.255.255"
    assert col[65536:] == [
        "10.2.3.4",
        "192.0.2.7",
        "198.51.100.0",
        "198.51.100.1",
        "198.51.100.2",
        "198.51.100.3",
        "203.0.113.9",
    ]
    sample = [0, 4097, 65535, 65540, len(col) - 1]
    emb = np.stack(t["embedding"].to_numpy(zero_copy_only=False)[sample])
    np.testing.assert_allclose(emb, scorer.ip_embedding([col[i] for i in sample]), atol=1e-6)


def test_entities_alone_and_together(model_dir, scorer, tmp_path):
    ents = tmp_path / "users.txt"
    ents.write_text("user_1\nuser_2\n\nnever seen, with comma\n")
    out = tmp_path / "users.parquet"
    assert export_embeddings.main(["--model", str(model_dir), "--output", str(out), "--entities", str(ents)]) == 0
    t = pq.read_table(out)
    assert t.column_names == ["entity", "embedding"]
    names = ["user_1", "user_2", "never seen, with comma"]
    assert t["entity"].to_pylist() == names
    np.testing.assert_allclose(np.stack(t["embedding"].to_numpy(zero_copy_only=False)), scorer.entity_embedding(names))
    with pytest.raises(SystemExit):  # both kinds need two outputs
        export_embeddings.main(
            ["--model", str(model_dir), "--output", str(out), "--entities", str(ents), "--ip-range", "10.0.0.0/30"]
        )
    both = [
        "--model",
        str(model_dir),
        "--output",
        str(tmp_path / "i.parquet"),
        "--ip-range",
        "10.0.0.0/30",
        "--entities",
        str(ents),
        "--entities-out",
        str(tmp_path / "e.parquet"),
    ]
    assert export_embeddings.main(both) == 0
    assert pq.read_table(tmp_path / "i.parquet").num_rows == 4 and pq.read_table(tmp_path / "e.parquet").num_rows == 3


def test_limits_and_bad_input_leave_no_file(model_dir, tmp_path, caplog):
    out = tmp_path / "x.parquet"
    base = ["--model", str(model_dir), "--output", str(out)]
    assert export_embeddings.main([*base, "--ip-range", "10.0.0.0/8", "--max-addresses", "1000"]) == 2
    assert "16,777,216 addresses, over the limit of 1,000" in caplog.text
    assert export_embeddings.main([*base, "--ip-range", "10.0.0.1/24"]) == 2  # host bits set: ambiguous
    assert "invalid IPv4 range" in caplog.text
    ips = tmp_path / "ips.txt"
    ips.write_text("10.0.0.1\n10.0.0.300\n")
    assert export_embeddings.main([*base, "--ips", str(ips)]) == 2
    assert f"{ips}:2: '10.0.0.300' is neither" in caplog.text
    ips.write_text("10.0.0.0/30\n10.0.1.0/24\n")
    assert export_embeddings.main([*base, "--ips", str(ips), "--max-addresses", "100"]) == 2
    assert f"{ips}:2: over the limit" in caplog.text
    assert export_embeddings.main([*base, "--ips", str(tmp_path / "missing.txt")]) == 2
    assert not out.exists() and not list(tmp_path.glob(".x.parquet*"))  # nothing half-written
    with pytest.raises(SystemExit):
        export_embeddings.main(base)  # nothing to export


def test_ip_batches_stream_a_slash_8_lazily():
    """A /8 is 256 batches of 65,536 produced one at a time: only the first is materialised here."""
    gen = ip_batches(parse_ranges(["10.0.0.0/8"]))
    first = next(gen)
    assert first.dtype == np.uint32 and first.size == 65_536 and int(first[0]) == 10 << 24
    with pytest.raises(ExportError, match="over the limit"):
        next(ip_batches(parse_ranges(["0.0.0.0/0"])))
