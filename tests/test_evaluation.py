"""Metrics on constructed inputs with known answers."""
import numpy as np
import pytest
import torch
from torch import nn

from orchestrator.datasets import make_dataset
from orchestrator.forget import ForgetSpec
from orchestrator.tasks.classification.evaluation import avg_gap, evaluate, mia_efficacy, mia_features


class LookupModel(nn.Module):
    """Predicts the label written in pixel (0, 0) (a value in 0..K-1 scaled into [0, 1])."""

    def __init__(self, k):
        super().__init__()
        self.k = k

    def forward(self, x):
        label = torch.round(x[:, 0, 0, 0] * 255).long()
        return nn.functional.one_hot(label, self.k).float() * 5.0


def make_data(y_train, y_test, written_train, written_test, forget):
    def images(written):
        x = np.zeros((len(written), 4, 4), dtype=np.uint8)
        x[:, 0, 0] = written
        return x

    ds = make_dataset("constructed", images(written_train), y_train, images(written_test), y_test, natural=False)
    from orchestrator.forget import split_forget

    return split_forget(ds, ForgetSpec.parse(forget), seed=0)


def test_accuracies_on_a_model_with_known_mistakes():
    y_train = np.array([0, 1, 2, 3] * 10)
    written_train = y_train.copy()
    # Every class-2 sample is predicted as 0 (the "forgotten" class is fully misclassified),
    # and 4 of the 30 retained samples are wrong.
    written_train[y_train == 2] = 0
    written_train[[1, 5, 9, 13]] = 3  # four class-1 samples predicted 3
    y_test = np.array([0, 1, 2, 3] * 5)
    written_test = y_test.copy()
    written_test[[0, 4]] = 1  # two class-0 test samples wrong
    data = make_data(y_train, y_test, written_train, written_test, "class:2")
    m = evaluate(LookupModel(4), data)
    assert m["UA"] == pytest.approx(100.0)
    assert m["RA"] == pytest.approx(100.0 * 26 / 30)
    assert m["TA"] == pytest.approx(100.0 * 13 / 15)  # class-wise: test set without class 2


def test_mia_efficacy_separable_members_and_non_members():
    members = np.full((50, 1), 0.99) + np.random.default_rng(0).normal(0, 0.005, (50, 1))
    nonmembers = np.full((50, 1), 0.30) + np.random.default_rng(1).normal(0, 0.005, (50, 1))
    assert mia_efficacy(members, nonmembers, np.full((10, 1), 0.99)) == pytest.approx(0.0)
    assert mia_efficacy(members, nonmembers, np.full((10, 1), 0.30)) == pytest.approx(100.0)
    half = np.concatenate([np.full((5, 1), 0.99), np.full((5, 1), 0.30)])
    assert mia_efficacy(members, nonmembers, half) == pytest.approx(50.0)


def test_mia_with_a_constant_feature_is_undefined_not_a_number_made_up():
    ones = np.ones((20, 1))
    assert np.isnan(mia_efficacy(ones, ones, np.zeros((5, 1))))
    assert np.isnan(mia_efficacy(ones, ones, np.ones((5, 1))))


def test_mia_features_known_values():
    probs = np.array([[0.5, 0.5], [1.0, 0.0]])
    labels = np.array([0, 1])
    assert mia_features(probs, labels, "confidence")[:, 0].tolist() == [0.5, 0.0]
    assert mia_features(probs, labels, "correctness")[:, 0].tolist() == [1.0, 0.0]
    np.testing.assert_allclose(mia_features(probs, labels, "entropy")[:, 0], [np.log(2), 0.0], atol=1e-9)
    # Modified entropy: 0.5*log(2) + 0.5*log(2) for the first row; huge for a confidently wrong row.
    ment = mia_features(probs, labels, "m_entropy")[:, 0]
    assert ment[0] == pytest.approx(np.log(2)) and ment[1] > 30
    assert mia_features(probs, labels, "prob").shape == (2, 2)
    with pytest.raises(ValueError, match="allowed confidence"):
        mia_features(probs, labels, "loss")


def test_avg_gap_is_the_mean_absolute_difference():
    retrain = {"UA": 5.0, "RA": 100.0, "TA": 94.0, "MIA": 12.0}
    assert avg_gap(retrain, retrain) == 0.0
    assert avg_gap({"UA": 1.0, "RA": 99.0, "TA": 96.0, "MIA": 20.0, "extra": 1}, retrain) == pytest.approx(
        (4 + 1 + 2 + 8) / 4
    )
