"""Validation metrics on bounded samples (ipinsights.train.validation): torch only, an untrained small model."""

from __future__ import annotations

import numpy as np
import pytest

from ipinsights.core.config import Hyperparameters, ModelOptions
from ipinsights.train.data import EncodedPairs, LabelledPairs
from ipinsights.train.trainer import build_model
from ipinsights.train.validation import discriminator_auc, labelled_metrics, shuffled_auc


@pytest.fixture(scope="module")
def model():
    return build_model(Hyperparameters(num_entity_vectors=500, vector_dim=8), ModelOptions(), seed=0)


def _pairs(n: int, seed: int = 0) -> EncodedPairs:
    rng = np.random.default_rng(seed)
    return EncodedPairs(rng.integers(0, 500, n), rng.integers(1 << 24, 224 << 24, n))


@pytest.mark.parametrize("metric", [shuffled_auc, discriminator_auc])
def test_an_auc_is_the_full_one_when_the_data_fits_the_sample(model, metric):
    data = _pairs(3000)
    assert metric(model, data, sample=3000) == metric(model, data, sample=10**9)


@pytest.mark.parametrize("metric", [shuffled_auc, discriminator_auc])
def test_an_auc_samples_the_same_rows_every_call(model, metric):
    data = _pairs(5000)
    sampled = metric(model, data, sample=1000)
    assert sampled == metric(model, data, sample=1000)  # every epoch compares the same pairs
    assert sampled != metric(model, data, sample=10**9)  # ... which are not all of them


def _labelled(n_normal: int, n_attack: int) -> LabelledPairs:
    pairs = _pairs(n_normal + 2 * n_attack, seed=2)
    kinds = np.array(["normal"] * n_normal + ["a"] * n_attack + ["b"] * n_attack, dtype=object)
    return LabelledPairs(pairs, (kinds != "normal").astype(np.int8), kinds)


def test_labelled_metrics_bound_each_kind_and_keep_small_ones_whole(model):
    data = _labelled(4000, 300)
    full = labelled_metrics(model, data, sample=10**9)
    assert labelled_metrics(model, data, sample=4000) == full
    bounded = labelled_metrics(model, data, sample=1000)
    assert bounded == labelled_metrics(model, data, sample=1000)
    assert bounded.keys() == full.keys() and bounded != full
