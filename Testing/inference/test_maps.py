"""Voxel-wise maps against analytic values and scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import entropy as scipy_entropy

from SegUncertaintyLib.inference.maps import binary_entropy, normalized_entropy, uncertainty_maps


def moments(samples: torch.Tensor):
    """samples: (T, C, ...) -> mean_p, mean_p2, mean normalized entropy."""
    return samples.mean(0), (samples**2).mean(0), normalized_entropy(samples, 1).mean(0)


def test_entropy_extremes_and_scipy():
    c = 4
    uniform = torch.full((c, 3), 1.0 / c)
    onehot = torch.eye(c)[:, :3]
    assert torch.allclose(normalized_entropy(uniform), torch.ones(3))
    assert torch.allclose(normalized_entropy(onehot), torch.zeros(3))
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(c), size=50).T  # (C, 50)
    expected = scipy_entropy(p, axis=0) / math.log(c)
    assert np.allclose(normalized_entropy(torch.tensor(p)).numpy(), expected)


def test_binary_entropy_in_nats():
    """Mehrtash et al. 2020 eq. 7 uses the natural logarithm: ln 2 at p = 0.5."""
    p = torch.tensor([0.0, 0.5, 1.0, 0.1])
    expected = [0.0, math.log(2.0), 0.0, scipy_entropy([0.1, 0.9])]
    assert np.allclose(binary_entropy(p).numpy(), expected)


def test_identical_samples_have_zero_mutual_information_and_variance():
    p = torch.tensor([[0.2, 0.5], [0.8, 0.5]])  # (C=2, V=2)
    samples = p.expand(10, 2, 2)
    maps = uncertainty_maps(*moments(samples), n_samples=10)
    assert torch.allclose(maps["mutual_information"], torch.zeros(2), atol=1e-6)
    assert torch.allclose(maps["variance"], torch.zeros(2), atol=1e-7)
    assert torch.allclose(maps["entropy"], maps["expected_entropy"], atol=1e-6)
    assert maps["entropy"][1] == pytest.approx(1.0)  # p = (0.5, 0.5)


def test_confident_but_contradicting_samples_are_pure_epistemic():
    # half the samples say class 0 with certainty, half class 1: H(mean) = 1, E[H] = 0 -> MI = 1
    samples = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5).unsqueeze(-1)  # (T=10, C=2, V=1)
    maps = uncertainty_maps(*moments(samples), n_samples=10)
    assert maps["entropy"].item() == pytest.approx(1.0)
    assert maps["expected_entropy"].item() == pytest.approx(0.0)
    assert maps["mutual_information"].item() == pytest.approx(1.0)
    # unbiased variance of five 0s and five 1s: 0.25 * 10/9
    assert maps["variance"].item() == pytest.approx(np.var([0] * 5 + [1] * 5, ddof=1))


def test_variance_is_max_over_classes_of_unbiased_variance():
    rng = np.random.default_rng(1)
    samples = rng.dirichlet(np.ones(3), size=(7, 20)).transpose(0, 2, 1)  # (T=7, C=3, V=20)
    maps = uncertainty_maps(*moments(torch.tensor(samples)), n_samples=7)
    expected = samples.var(axis=0, ddof=1).max(axis=0)
    assert np.allclose(maps["variance"].numpy(), expected, atol=1e-10)
    expected_mi = scipy_entropy(samples.mean(0), axis=0) / math.log(3) - np.mean(
        scipy_entropy(samples, axis=1) / math.log(3), axis=0)
    assert np.allclose(maps["mutual_information"].numpy(), expected_mi, atol=1e-10)


def test_single_sample_has_no_variance():
    p = torch.tensor([[0.3], [0.7]])
    maps = uncertainty_maps(p, p * p, normalized_entropy(p), n_samples=1)
    assert maps["variance"].item() == 0.0
