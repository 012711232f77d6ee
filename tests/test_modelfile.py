"""Model files: save/load round trip, and corrupt, truncated or foreign files refused clearly."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ipinsights.core.config import Hyperparameters, ModelOptions
from ipinsights.score.scorer import Scorer
from ipinsights.storage.modelfile import FORMAT_VERSION, ModelFileError, load_model, save_model
from ipinsights.train.trainer import build_model

ENT = ["alice", "bob", "carol", "dave"]
IPS = ["10.0.0.1", "192.0.2.7", "not-an-ip", "203.0.113.200"]


@pytest.fixture()
def model_dir(tmp_path):
    hp = Hyperparameters(num_entity_vectors=64, vector_dim=8, num_ip_encoder_layers=2)
    model = build_model(hp, ModelOptions(hash_seed=99, ip_hash_buckets=512), seed=1)
    return save_model(model, tmp_path / "model", training={"note": "x"}, config={"a": 1}), model


def test_round_trip_identical_scores(model_dir):
    path, model = model_dir
    bundle = load_model(path)
    assert bundle.options.hash_seed == 99 and bundle.hyperparameters.num_ip_encoder_layers == 2
    m = bundle.manifest
    assert m["format"] == "ipinsights-model" and m["format_version"] == FORMAT_VERSION and m["hash_version"] == 1
    assert m["training"] == {"note": "x"} and m["config"] == {"a": 1}
    for k, v in model.state_dict().items():
        assert np.array_equal(v.numpy(), bundle.model.state_dict()[k].numpy())
    s1 = Scorer.load(path).dot_product(ENT, IPS)
    s2 = Scorer.load(path).dot_product(ENT, IPS)
    assert np.isnan(s1[2]) and np.array_equal(s1, s2, equal_nan=True)
    emb = Scorer.load(path).ip_embedding(IPS)
    assert emb.shape == (4, 8) and np.isnan(emb[2]).all()
    ent = Scorer.load(path).entity_embedding(ENT)
    assert np.allclose((ent * emb).sum(1)[[0, 1, 3]], s1[[0, 1, 3]], atol=1e-5)


def test_version_1_model_loads_as_ipv4_only(tmp_path):
    """A model written before IPv6 (format 1, no IPv6 options) still loads, and says IPv6 is unknown."""
    hp = Hyperparameters(num_entity_vectors=64, vector_dim=8)
    model = build_model(hp, ModelOptions(ip_hash_buckets=512, ipv6_prefix_lengths=()), seed=1)
    path = save_model(model, tmp_path / "old")
    manifest = json.loads((path / "model.json").read_text())
    manifest["format_version"] = 1
    for key in ("ipv6_prefix_lengths", "ipv6_hash_buckets"):
        del manifest["model_options"][key]
    (path / "model.json").write_text(json.dumps(manifest))
    scorer = Scorer.load(path)
    assert scorer.bundle.options.ipv6_prefix_lengths == ()
    s = scorer.dot_product(["a", "a", "a"], ["192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1"])
    assert np.isnan(s[1]) and s[0] == s[2]  # IPv6 unknown to it: NaN, never a made-up score


def test_save_replaces_atomically(model_dir, tmp_path):
    path, model = model_dir
    save_model(model, path, training={"note": "second"})
    assert load_model(path).manifest["training"] == {"note": "second"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary leftovers


def _corrupt_weights(path):
    w = path / "weights.safetensors"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))


def _truncate(path):
    w = path / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])


def _garbage_manifest(path):
    (path / "model.json").write_text("{not json")


def _foreign(path):
    (path / "model.json").write_text(json.dumps({"format": "something-else"}))


def _future_version(path):
    m = json.loads((path / "model.json").read_text())
    m["format_version"] = 99
    (path / "model.json").write_text(json.dumps(m))


def _no_weights(path):
    (path / "weights.safetensors").unlink()


def _bad_shape(path):
    m = json.loads((path / "model.json").read_text())
    m["hyperparameters"]["vector_dim"] = 16
    (path / "model.json").write_text(json.dumps(m))


def _bad_hyperparameter(path):
    m = json.loads((path / "model.json").read_text())
    m["hyperparameters"]["epochs"] = 0
    (path / "model.json").write_text(json.dumps(m))


def _replace_file(path, name, data: bytes):
    """Replace a model file and record it in the manifest, as a tool (or an attacker) could."""
    import hashlib

    (path / name).write_bytes(data)
    m = json.loads((path / "model.json").read_text())
    m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (path / "model.json").write_text(json.dumps(m))


def _escaping_name(path):
    m = json.loads((path / "model.json").read_text())
    m["files"]["../../etc/hostname"] = {"sha256": "0" * 64, "bytes": 1}
    (path / "model.json").write_text(json.dumps(m))


def _nan_weights(path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "weights.safetensors"))
    tensors["entity_table"][3, 0] = float("nan")
    save_file(tensors, str(path / "weights.safetensors"))
    _replace_file(path, "weights.safetensors", (path / "weights.safetensors").read_bytes())


def _oversized(path):
    m = json.loads((path / "model.json").read_text())
    m["hyperparameters"]["num_entity_vectors"] = 250_000_000
    m["hyperparameters"]["vector_dim"] = 4096
    (path / "model.json").write_text(json.dumps(m))


@pytest.mark.parametrize(
    ("damage", "text"),
    [
        (_corrupt_weights, "checksum mismatch"),
        (_truncate, "truncated"),
        (_garbage_manifest, "not valid JSON"),
        (_foreign, "not an ipinsights model"),
        (_future_version, "format_version 99 is not supported"),
        (_no_weights, "missing"),
        (_bad_shape, "do not match"),
        (_bad_hyperparameter, "epochs=0 is out of range"),
        (_escaping_name, "'../../etc/hostname', which is not a file name inside the model directory"),
        (_nan_weights, "NaN or infinite weights in entity_table"),
        (_oversized, "exceeds the 8 GiB limit"),
    ],
)
def test_damaged_model_refused(model_dir, damage, text):
    path, _ = model_dir
    damage(path)
    with pytest.raises(ModelFileError, match=text):
        load_model(path)


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelFileError, match="not a model directory"):
        load_model(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFileError, match="missing"):
        load_model(tmp_path / "empty")


def test_pickle_is_never_loaded(model_dir):
    """A weights file that is a torch pickle (which could run code) is refused, not unpickled."""
    import torch

    path, model = model_dir
    w = path / "weights.safetensors"
    torch.save(model.state_dict(), w)
    m = json.loads((path / "model.json").read_text())
    from ipinsights.storage.modelfile import sha256_file

    m["files"]["weights.safetensors"] = {"sha256": sha256_file(w), "bytes": w.stat().st_size}
    (path / "model.json").write_text(json.dumps(m))
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_model(path)
    shutil.rmtree(path)


def test_a_model_with_non_finite_weights_is_never_saved(tmp_path):
    hp = Hyperparameters(num_entity_vectors=64, vector_dim=8)
    model = build_model(hp, ModelOptions(ip_hash_buckets=512), seed=1)
    model.ip_table.data[5, 2] = float("inf")
    with pytest.raises(ValueError, match="NaN or infinite weights in ip_table"):
        save_model(model, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []  # nothing half-written either


def test_unreadable_entity_stats_is_a_model_file_error(model_dir):
    """A bad entities.safetensors (checksums updated to match) is a ModelFileError naming it, not a raw
    SafetensorError that a job or the endpoint would show as a traceback."""
    path, _ = model_dir
    _replace_file(path, "entities.safetensors", b"definitely not safetensors")
    with pytest.raises(ModelFileError, match=r"entities\.safetensors: not a readable entity stats file"):
        Scorer.load(path)


def test_loading_assigns_the_saved_weights_without_building_a_second_copy(model_dir, monkeypatch):
    """The saved tensors become the parameters: the model's own tables are never allocated nor initialised
    (which held the weights twice at peak; ``bench/model_load.py`` measures it)."""
    from ipinsights.core.model import IPInsightsModel

    path, model = model_dir
    placeholder = IPInsightsModel(model.hp, model.opts, init_weights=False)
    assert placeholder.entity_table.is_meta and placeholder.ip_table.is_meta  # no memory behind them

    def initialised(self, generator=None):
        raise AssertionError("load_model initialised a model it then overwrote")

    monkeypatch.setattr(IPInsightsModel, "reset_parameters", initialised)
    loaded = load_model(path).model
    for name, param in loaded.named_parameters():
        assert not param.is_meta and param.requires_grad, name  # real weights, trainable (a warm start)
        assert np.array_equal(param.detach().numpy(), model.state_dict()[name].numpy()), name


def test_non_finite_weights_are_found_in_any_chunk():
    import torch

    from ipinsights.storage.modelfile import _non_finite

    t = torch.zeros(10, 3)
    assert _non_finite({"t": t}, chunk=4) == []
    t[9, 2] = float("inf")  # in the last, short chunk
    assert _non_finite({"t": t, "ok": torch.ones(5)}, chunk=4) == ["t"]
