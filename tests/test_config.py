"""Hyperparameters: SageMaker's names, defaults and ranges; YAML loading and overrides."""

from __future__ import annotations

import pytest

from ipinsights.core.config import ConfigError, Hyperparameters, ModelOptions, TrainConfig, config_to_dict, load_config

REQUIRED = {"num_entity_vectors": 100, "vector_dim": 16}

# (parameter, bad value, text the message must contain)
BAD = [
    ("num_entity_vectors", 0, "[1, 250000000]"),
    ("num_entity_vectors", 250_000_001, "[1, 250000000]"),
    ("vector_dim", 3, "[4, 4096]"),
    ("vector_dim", 4097, "[4, 4096]"),
    ("epochs", 0, ">= 1"),
    ("learning_rate", 1e-7, "[1e-06, 10.0]"),
    ("learning_rate", 10.5, "[1e-06, 10.0]"),
    ("mini_batch_size", 0, "[1, 500000]"),
    ("mini_batch_size", 500_001, "[1, 500000]"),
    ("num_ip_encoder_layers", -1, "[0, 100]"),
    ("num_ip_encoder_layers", 101, "[0, 100]"),
    ("random_negative_sampling_rate", -1, "[0, 500]"),
    ("random_negative_sampling_rate", 501, "[0, 500]"),
    ("shuffled_negative_sampling_rate", -1, "[0, 500]"),
    ("shuffled_negative_sampling_rate", 501, "[0, 500]"),
    ("weight_decay", -0.1, "[0.0, 10.0]"),
    ("weight_decay", 10.1, "[0.0, 10.0]"),
    ("batch_metrics_publish_interval", 0, ">= 1"),
    ("epochs", 2.5, "must be an integer"),
    ("vector_dim", True, "must be an integer"),
    ("learning_rate", float("nan"), "finite number"),
]


def test_defaults_match_sagemaker():
    hp = Hyperparameters(**REQUIRED)
    assert (hp.epochs, hp.learning_rate, hp.mini_batch_size, hp.num_ip_encoder_layers) == (10, 0.001, 10_000, 1)
    assert (hp.random_negative_sampling_rate, hp.shuffled_negative_sampling_rate) == (1, 1)
    assert (hp.weight_decay, hp.batch_metrics_publish_interval) == (0.00001, 1000)


@pytest.mark.parametrize(("name", "value", "allowed"), BAD)
def test_every_range_refused_with_clear_message(name, value, allowed):
    with pytest.raises(ConfigError) as err:
        Hyperparameters(**{**REQUIRED, name: value})
    msg = str(err.value)
    assert name in msg and allowed in msg
    assert str(value) in msg or repr(value) in msg


@pytest.mark.parametrize(("r", "s"), [(0, 0), (300, 201)])
def test_sum_of_negative_rates_refused(r, s):
    with pytest.raises(
        ConfigError, match=r"random_negative_sampling_rate \+ shuffled_negative_sampling_rate.*\[1, 500\]"
    ):
        Hyperparameters(**REQUIRED, random_negative_sampling_rate=r, shuffled_negative_sampling_rate=s)


def test_edges_accepted():
    Hyperparameters(
        num_entity_vectors=1,
        vector_dim=4,
        learning_rate=1e-6,
        mini_batch_size=1,
        num_ip_encoder_layers=0,
        random_negative_sampling_rate=0,
        shuffled_negative_sampling_rate=1,
        weight_decay=0.0,
    )
    Hyperparameters(
        num_entity_vectors=250_000_000,
        vector_dim=4096,
        learning_rate=10.0,
        mini_batch_size=500_000,
        num_ip_encoder_layers=100,
        random_negative_sampling_rate=250,
        shuffled_negative_sampling_rate=250,
        weight_decay=10.0,
    )


def test_required_parameters_named():
    with pytest.raises(ConfigError, match=r"hyperparameters\.num_entity_vectors"):
        load_config(TrainConfig, None, ["--vector_dim=8"])


def test_yaml_and_overrides(tmp_path):
    # conf/demo.yml: its learning rate differs from the dataclass's default, so what the file says is seen.
    cfg = load_config(TrainConfig, "conf/demo.yml", ["--epochs=3", "--train.seed=9", "--ip_prefix_lengths=8,16"])
    assert cfg.hyperparameters.epochs == 3 and cfg.train.seed == 9
    assert cfg.model.ip_prefix_lengths == (8, 16)
    assert cfg.hyperparameters.learning_rate == 0.01  # from the file
    d = config_to_dict(cfg)
    assert d["model"]["ip_prefix_lengths"] == [8, 16]
    # round trip through YAML
    import yaml

    p = tmp_path / "c.yml"
    p.write_text(yaml.safe_dump(d))
    assert load_config(TrainConfig, p) == cfg


@pytest.mark.parametrize(
    ("override", "text"),
    [
        ("--epochs=abc", "hyperparameters.epochs='abc' must be an integer"),
        ("--nope=1", "not a known setting"),
        ("--learning_rate=100", "learning_rate=100.0 is out of range"),
        ("epochs=3", "must look like --name=value"),
    ],
)
def test_bad_overrides(override, text):
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        load_config(TrainConfig, "conf/train.yml", [override])


def test_unknown_yaml_key_refused(tmp_path):
    p = tmp_path / "c.yml"
    p.write_text("hyperparameters: {num_entity_vectors: 10, vector_dim: 8, epoch: 3}\n")
    with pytest.raises(ConfigError, match=r"unknown setting.*hyperparameters\.epoch"):
        load_config(TrainConfig, p)


def test_model_options_validated():
    with pytest.raises(ConfigError, match="strictly increasing"):
        ModelOptions(ip_prefix_lengths=(16, 8))
    with pytest.raises(ConfigError, match=r"ip_prefix_lengths\[\]=33"):
        ModelOptions(ip_prefix_lengths=(8, 33))


def test_model_size_checked_when_the_config_loads():
    """The 8 GiB cap is a config error at load time (before any Spark work), not when the model is built."""
    with pytest.raises(ConfigError, match=r"model of 38.2 GiB exceeds the 8 GiB limit"):
        load_config(TrainConfig, "conf/train.yml", ["--num_entity_vectors=2000000", "--vector_dim=4096"])
