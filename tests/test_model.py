"""The model, the row-sparse optimiser and the trainer: needs only torch (no Spark)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from toyworld import make_toy_world

from ipinsights.core.config import Hyperparameters, ModelOptions, TrainOptions
from ipinsights.core.ip import ipv4_to_str, parse_ip, parse_ipv4
from ipinsights.core.model import IPInsightsModel
from ipinsights.score.evaluate import baseline_scores, evaluate_scores
from ipinsights.score.scorer import Scorer
from ipinsights.storage.modelfile import save_model
from ipinsights.train.data import encode_pairs
from ipinsights.train.optim import RowAdam
from ipinsights.train.trainer import Trainer, build_model, train_model
from ipinsights.train.validation import discriminator_auc

HP = dict(
    num_entity_vectors=1000,
    vector_dim=32,
    epochs=4,
    learning_rate=0.01,
    mini_batch_size=256,
    random_negative_sampling_rate=5,
    shuffled_negative_sampling_rate=1,
)
OPTS = TrainOptions(seed=3, num_threads=1, progress_bar="off")


@pytest.fixture(scope="module")
def world():
    return make_toy_world(n_entities=400, events_per_entity=60, n_test=4000, seed=0)


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    hp = Hyperparameters(**HP)
    mo = ModelOptions()
    train = encode_pairs(world.train["entity"], world.train["ip"], hp.num_entity_vectors, mo.hash_seed)
    val = encode_pairs(world.validation["entity"], world.validation["ip"], hp.num_entity_vectors, mo.hash_seed)
    result = train_model(hp, mo, OPTS, train, val)
    path = tmp_path_factory.mktemp("model") / "m"
    save_model(result.model, path, training={"epochs": [m.as_dict() for m in result.history]})
    return result, path


def test_forward_shapes_and_prefix_rows():
    hp = Hyperparameters(num_entity_vectors=50, vector_dim=8, num_ip_encoder_layers=2)
    m = IPInsightsModel(hp, ModelOptions(ip_prefix_lengths=(8, 16, 24), ip_hash_buckets=100_000))
    ips = torch.tensor([0x01020304, 0x01020305, 0x01020404, 0x7F000001])
    rows = m.ip_rows(ips)
    assert rows.shape == (4, 3)
    assert rows[:, 0].tolist() == [1, 1, 1, 127]  # /8 is an exact block
    assert rows[0, 1] == 256 + 0x0102 and rows[2, 1] == rows[0, 1]  # /16 exact, shared
    assert rows[0, 2] == rows[1, 2] != rows[2, 2]  # /24 hashed: same network -> same row
    assert ((rows[:, 2] >= 256 + 65536) & (rows[:, 2] < 256 + 65536 + 100_000)).all()
    out = m(torch.tensor([0, 1, 2, 3]), ips)
    assert out.shape == (4,)
    assert m.ip_vectors(ips).shape == (4, 8) and m.entity_vectors(torch.tensor([1])).shape == (1, 8)


def test_unseen_network_defers_to_its_parents():
    """Deeper levels start at zero: before training, two hosts of one /16 have the same vector."""
    m = build_model(Hyperparameters(num_entity_vectors=10, vector_dim=8), ModelOptions(), seed=0)
    v = m.ip_vectors(torch.tensor([0x0A0B0C0D, 0x0A0BFF01]))
    assert torch.allclose(v[0], v[1])


def test_batch_vectors_are_the_models_vectors_through_the_touched_rows():
    """The training forward pass: the same vectors as scoring, gradients only on the rows a batch touches."""
    hp = Hyperparameters(num_entity_vectors=50, vector_dim=8, num_ip_encoder_layers=2)
    m = build_model(hp, ModelOptions(ip_hash_buckets=1000, ipv6_hash_buckets=500), seed=0)
    with torch.no_grad():
        m.ip_table.normal_()
    ent = torch.tensor([3, 1, 3, 7])
    keys = torch.tensor(parse_ip(["192.0.2.1", "2001:db8:1:200::1", "198.51.100.3", "192.0.2.9"]).value)
    vec = m.batch_vectors(ent, keys)
    torch.testing.assert_close(vec.entities, m.entity_vectors(ent))
    torch.testing.assert_close(vec.ips, m.ip_vectors(keys))
    (vec.entities * vec.ips).sum().backward()
    m(ent, keys).sum().backward()
    assert vec.entity_rows.ids.tolist() == [1, 3, 7]
    torch.testing.assert_close(vec.entity_rows.values.grad, m.entity_table.grad[vec.entity_rows.ids])
    torch.testing.assert_close(vec.ip_rows.values.grad, m.ip_table.grad[vec.ip_rows.ids])
    touched = m.ip_table.grad.abs().sum(1).nonzero().squeeze(1)
    assert set(touched.tolist()) <= set(vec.ip_rows.ids.tolist())


def test_row_adam_equals_torch_adam_when_every_row_is_touched():
    torch.manual_seed(0)
    table = torch.randn(6, 4)
    ref = torch.nn.Parameter(table.clone())
    opt = torch.optim.Adam([ref], lr=0.05, weight_decay=0.01)
    mine = table.clone()
    row_opt = RowAdam(mine, lr=0.05, weight_decay=0.01)
    for step in range(5):
        grad = torch.randn(6, 4) * (step + 1)
        ref.grad = grad.clone()
        opt.step()
        row_opt.step(torch.arange(6), grad.clone())
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-5, atol=1e-6)


def test_row_adam_leaves_untouched_rows_alone():
    table = torch.ones(5, 3)
    opt = RowAdam(table, lr=0.1, weight_decay=0.5)
    opt.step(torch.tensor([1, 3]), torch.ones(2, 3))
    assert (table[[0, 2, 4]] == 1).all() and (table[[1, 3]] < 1).all()


def test_row_adam_resumes_from_a_checkpoint_of_rows_by_moments():
    """Checkpoints hold the moments as (rows, 2, d) (m and v of a row side by side), as they always have."""
    torch.manual_seed(1)
    first, grads = torch.randn(8, 4), [torch.randn(3, 4) for _ in range(4)]
    rows = torch.tensor([0, 5, 7])
    a, b = RowAdam(first.clone(), 0.05, 0.01), RowAdam(first.clone(), 0.05, 0.01)
    for g in grads[:3]:
        a.step(rows, g)
    state = a.state_dict()
    assert state["state"].shape == (8, 2, 4) and (state["state"][[1, 2, 3, 4, 6]] == 0).all()
    b.table.copy_(a.table)
    b.load_state_dict({k: v.contiguous().clone() for k, v in state.items()})  # as torch.load returns it
    a.step(rows, grads[3])
    b.step(rows, grads[3])
    assert torch.equal(a.table, b.table) and torch.equal(a.state, b.state)


def test_learns_toy_world(world, trained):
    result, _ = trained
    hist = result.history
    assert len(hist) == HP["epochs"] and hist[-1].loss < hist[0].loss
    assert hist[-1].discriminator_auc is not None and hist[-1].discriminator_auc >= 0.95
    scorer_scores = _score(result.model, world.test["entity"], world.test["ip"])
    kinds = world.test["kind"].to_numpy(zero_copy_only=False)
    sel = kinds != "same_16_other_pool"
    ev = evaluate_scores(-scorer_scores[sel], world.test["label"].to_numpy()[sel], kinds[sel])
    assert ev.auc["model"]["random_ip"] >= 0.95


def _score(model, entities, ips):
    from ipinsights.core.hashing import entity_buckets

    rows = torch.as_tensor(entity_buckets(entities, model.opts.hash_seed, model.hp.num_entity_vectors))
    with torch.no_grad():
        return model(rows, torch.as_tensor(parse_ipv4(ips).value.astype(np.int64))).numpy()


def test_unseen_ip_in_own_24_scores_as_normal(world, trained):
    """A never-seen host inside a /24 the entity used beats that entity's random-IP scores >= 90%."""
    result, _ = trained
    rng = np.random.default_rng(5)
    train_ips = parse_ipv4(world.train["ip"]).value
    seen = set(train_ips.tolist())
    names = world.train["entity"].to_numpy(zero_copy_only=False)
    wins = total = 0
    for e in rng.choice(world.entity_names, 100, replace=False):
        mine = train_ips[names == e]
        net = int(mine[0] >> 8)
        hosts = [(net << 8) | h for h in range(1, 255) if ((net << 8) | h) not in seen][:5]
        randoms = rng.integers(1 << 24, 224 << 24, 20)
        s_new = _score(result.model, [e] * len(hosts), ipv4_to_str(hosts))
        s_rand = _score(result.model, [e] * 20, ipv4_to_str(randoms))
        wins += int((s_new[:, None] > s_rand[None, :]).sum())
        total += s_new.size * s_rand.size
    assert wins / total >= 0.90


def test_model_beats_per_entity_baselines(world, trained):
    _, path = trained
    scorer = Scorer.load(path)
    t = world.test
    ev = evaluate_scores(
        scorer.anomaly_score(t["entity"], t["ip"]),
        t["label"].to_numpy(),
        t["kind"].to_numpy(zero_copy_only=False),
        baseline_scores(world.train["entity"], world.train["ip"], t["entity"], t["ip"]),
    )
    for name in ("seen_exact_ip", "seen_same_24", "seen_same_16"):
        assert ev.auc["model"]["overall"] > ev.auc[name]["overall"] + 0.02, ev.auc_table()
    assert ev.auc["model"]["same_16_other_pool"] > 0.9


def test_training_is_reproducible(world):
    hp = Hyperparameters(**{**HP, "epochs": 1})
    train = encode_pairs(world.train["entity"][:3000], world.train["ip"][:3000], hp.num_entity_vectors, 0)
    a = train_model(hp, ModelOptions(), OPTS, train)
    b = train_model(hp, ModelOptions(), OPTS, train)
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    assert a.history[0].loss == b.history[0].loss


def test_metrics_published_every_interval(world, caplog):
    hp = Hyperparameters(**{**HP, "epochs": 1, "batch_metrics_publish_interval": 3, "mini_batch_size": 100})
    train = encode_pairs(world.train["entity"][:1000], world.train["ip"][:1000], hp.num_entity_vectors, 0)
    model = build_model(hp, ModelOptions(), 0)
    with caplog.at_level("INFO", logger="ipinsights.train.trainer"):
        Trainer(model, hp, OPTS).fit(train)
    batches = [r.getMessage() for r in caplog.records if "batch" in r.getMessage()]
    assert [m.split()[3] for m in batches] == ["3/10:", "6/10:", "9/10:", "10/10:"]


def test_zero_layers_and_only_shuffled_negatives(world):
    hp = Hyperparameters(**{**HP, "epochs": 1, "num_ip_encoder_layers": 0, "random_negative_sampling_rate": 0})
    train = encode_pairs(world.train["entity"][:2000], world.train["ip"][:2000], hp.num_entity_vectors, 0)
    res = train_model(hp, ModelOptions(), OPTS, train)
    assert np.isfinite(res.history[0].loss)


def test_batch_of_one_has_no_shuffled_negatives(world):
    hp = Hyperparameters(**{**HP, "epochs": 1, "mini_batch_size": 1, "random_negative_sampling_rate": 1})
    train = encode_pairs(world.train["entity"][:20], world.train["ip"][:20], hp.num_entity_vectors, 0)
    res = train_model(hp, ModelOptions(), OPTS, train)
    assert res.history[0].pairs == 20


def test_discriminator_auc_is_deterministic(world, trained):
    result, _ = trained
    val = encode_pairs(world.validation["entity"], world.validation["ip"], HP["num_entity_vectors"], 0)
    assert discriminator_auc(result.model, val) == discriminator_auc(result.model, val)


def test_invalid_training_ips_dropped_and_reported(caplog):
    with caplog.at_level("WARNING"):
        enc = encode_pairs(["a", "b", "c"], ["1.2.3.4", "999.1.1.1", "5.6.7.8"], 10, 0, what="t.csv")
    assert len(enc) == 2 and enc.n_invalid == 1
    assert "t.csv: dropped 1 row" in caplog.text and "row 2: '999.1.1.1'" in caplog.text
    with pytest.raises(ValueError, match="no row has a valid"):
        encode_pairs(["a"], ["x"], 10, 0)


def test_work_files_give_the_same_rows_as_in_memory_encoding(tmp_path):
    """Work files hold 64-bit entity hashes; reading them gives the rows encode_pairs gives."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ipinsights.core.hashing import hash_strings
    from ipinsights.train.spec import read_pairs

    entities = [f"user_{i}" for i in range(500)] + ["", "ü-ñ"]
    ips = ["10.0.0.1"] * len(entities)
    pq.write_table(
        pa.table({"entity_hash": hash_strings(entities, 7).view(np.int64), "ip": np.zeros(len(ips))}),
        tmp_path / "w.parquet",
    )
    from_files = read_pairs([str(tmp_path / "w.parquet")], 97)
    assert np.array_equal(from_files.entity_rows, encode_pairs(entities, ips, 97, 7).entity_rows)


def test_train_model_stops_when_asked_and_saves_what_it_trained(world, tmp_path):
    from ipinsights.train.trainer import EpochMetrics

    hp = Hyperparameters(**{**HP, "epochs": 3})
    train = encode_pairs(world.train["entity"][:2000], world.train["ip"][:2000], hp.num_entity_vectors, 0)
    seen = []

    def stop_after_2(trainer, history):
        seen.append(trainer.epoch)
        return len(history) == 2

    res = train_model(
        hp,
        ModelOptions(),
        OPTS,
        train,
        on_epoch_end=stop_after_2,
        model_dir=tmp_path / "m",
        config={"note": "x"},
        manifest={"why": "test"},
    )
    assert res.stopped and seen == [1, 2] and [m.epoch for m in res.history] == [1, 2]
    training = Scorer.load(tmp_path / "m").bundle.manifest["training"]
    assert [e["epoch"] for e in training["epochs"]] == [1, 2]
    assert training["pairs"] == 2000 and training["why"] == "test"
    m = res.history[0]
    m.extra["comm_bytes"] = 5.0
    assert EpochMetrics.from_dict(m.as_dict()) == m


def test_a_diverging_run_stops_before_its_checkpoint_and_model(world, tmp_path):
    """Weights that turn non-finite stop training with DivergedError: the diverged epoch is in the history,
    but it is never checkpointed (the last good checkpoint stays the latest) and no model is saved."""
    from ipinsights.train.trainer import DivergedError

    hp = Hyperparameters(**{**HP, "epochs": 3})
    train = encode_pairs(world.train["entity"][:2000], world.train["ip"][:2000], hp.num_entity_vectors, 0)
    checkpointed = []

    def checkpoint_then_blow_up(trainer, history):
        checkpointed.append(trainer.epoch)
        trainer.model.ip_table.data[:50] = float("inf")  # what a too-large learning rate does, made certain

    history = []
    with pytest.raises(DivergedError, match=r"diverged at epoch 2: loss=nan, non-finite weights in entity_table"):
        train_model(
            hp,
            ModelOptions(),
            OPTS,
            train,
            on_epoch_end=checkpoint_then_blow_up,
            history=history,
            model_dir=tmp_path / "m",
        )
    assert checkpointed == [1] and [m.epoch for m in history] == [1, 2]
    assert not (tmp_path / "m").exists()


def test_resumed_ranks_draw_their_own_negatives(world):
    """After a resume from rank 0's checkpoint, rank 1 still samples its own negatives: two ranks given the
    same state and data train apart (before, both restored rank 0's sampler and drew identical negatives)."""
    from ipinsights.train.comm import LocalComm

    hp = Hyperparameters(**{**HP, "epochs": 2})
    train = encode_pairs(world.train["entity"][:2000], world.train["ip"][:2000], hp.num_entity_vectors, 0)
    first = Trainer(build_model(hp, ModelOptions(), 0), hp, OPTS)
    first.fit(train, epochs=1)
    state = first.state_dict()
    models = []  # (each rank loads its own copy of the state, as each would from the checkpoint file)
    for rank in (0, 1):
        comm = LocalComm()
        comm.rank = rank  # a world whose collectives are identities: only the rank id differs
        trainer = Trainer(build_model(hp, ModelOptions(), 0), hp, OPTS, comm=comm)
        trainer.load_state_dict(copy.deepcopy(state))
        trainer.fit(train)
        models.append(trainer.model.entity_table.detach().clone())
    assert not torch.equal(models[0], models[1])


def test_shuffled_auc_is_harder_than_discriminator_auc_where_entities_share_isps():
    """Entities on 8 shared ISPs: another entity's address is often a network of the same ISP, which a
    random address almost never is; both metrics are reported every epoch."""
    rng = np.random.default_rng(0)
    n = 300
    isp = rng.integers(0, 8, n)  # each entity's ISP: a /16
    ent = np.repeat(np.arange(n), 40)
    ips = ((isp[ent] + 20) << 24) | (rng.integers(0, 4, ent.size) << 16) | rng.integers(0, 1 << 16, ent.size)
    names = [f"e{i}" for i in ent]
    text = ipv4_to_str(ips.astype(np.uint32)).to_pylist()
    hp = Hyperparameters(**{**HP, "num_entity_vectors": 2 * n, "epochs": 3})
    train = encode_pairs(names[::2], text[::2], hp.num_entity_vectors, 0)
    val = encode_pairs(names[1::2], text[1::2], hp.num_entity_vectors, 0)
    result = train_model(hp, ModelOptions(ip_hash_buckets=4096), OPTS, train, val)
    last = result.history[-1]
    assert last.discriminator_auc > 0.95
    assert 0.5 < last.extra["shuffled_auc"] < last.discriminator_auc - 0.05, last.as_dict()
    assert "shuffled_auc" in last.as_dict()
