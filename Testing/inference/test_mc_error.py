"""The maps' Monte Carlo error against a network whose E[p] and Var[p] are known in closed form, and the
--tolerance stopping rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from SegUncertaintyLib.core.methods import SampleSpec
from SegUncertaintyLib.inference.mc_error import foreground_box, next_sample_count, sample_in_rounds
from SegUncertaintyLib.inference.model_grid import mc_error
from SegUncertaintyLib.inference.sliding_window import WindowConfig, run_sliding_window
from Testing.support.tiny_models import ThresholdNet

GAIN, Q = 8.0, 0.2  # ThresholdNet: logit_fg - logit_bg = 2 gain (dropout(x) - 0.5), dropout p = Q on the input
SHAPE, WINDOW, SPACING = (32, 16, 16), (16, 16, 16), (1.0, 1.0, 1.0)


def _volume() -> np.ndarray:
    """x rising from 0.2 to 0.7 along z: the threshold (x / (1 - Q) = 0.5, x = 0.4) lies inside."""
    return np.broadcast_to(np.linspace(0.2, 0.7, SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()


def _analytic(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[p_fg] and Var[p_fg] of one sample: the input is kept and scaled by 1 / (1 - Q), or zeroed (prob. Q)."""
    sigmoid = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    kept, dropped = sigmoid(2 * GAIN * (x / (1 - Q) - 0.5)), sigmoid(-GAIN)
    return (1 - Q) * kept + Q * dropped, Q * (1 - Q) * (kept - dropped) ** 2


def _run(n: int, seed: int = 3):
    plan = [SampleSpec(0, (), True)] * n
    config = WindowConfig(WINDOW, overlap=0.0, max_batch=32, device="cpu", seed=seed)  # no overlap: exact errors
    result = run_sliding_window(_volume(), [ThresholdNet(GAIN, Q).eval()], plan, 2, config)
    return result, max(mc_error(result, SPACING).values())


def test_error_maps_match_the_closed_form_standard_errors():
    t = 200
    result, _ = _run(t)
    mean, variance = _analytic(_volume().astype(np.float64))
    uncertain = variance > 1e-4
    expected_p = np.sqrt(variance / t)
    ratio_p = result.errors["probability"].numpy()[uncertain] / expected_p[uncertain]
    assert np.median(ratio_p) == pytest.approx(1.0, abs=0.05)
    # delta method for two classes: |d H / d p_fg| = |ln((1 - p) / p)|, normalized by ln 2
    expected_h = np.abs(np.log((1 - mean) / mean)) * expected_p / math.log(2)
    ratio_h = result.errors["entropy"].numpy()[uncertain] / expected_h[uncertain]
    assert np.median(ratio_h) == pytest.approx(1.0, abs=0.1)


def test_tolerance_rule_meets_its_tolerance_at_99_percent_of_voxels_and_repeats_its_t():
    tolerance = 0.05
    (result, rounds) = sample_in_rounds(_run, 10, 2000, tolerance)
    t = rounds[-1]["n_samples"]
    assert rounds[-1]["error"] <= tolerance < rounds[0]["error"] and t < 2000
    mean, variance = _analytic(_volume().astype(np.float64))
    box = foreground_box(result.mean_p.argmax(0).numpy(), SPACING)
    true_p = np.sqrt(variance / t)
    true_h = np.abs(np.log((1 - mean) / mean)) * true_p / math.log(2)
    assert np.mean(true_p[box] <= tolerance) >= 0.99 and np.mean(true_h[box] <= tolerance) >= 0.99
    deviation = np.abs(result.mean_p[1].numpy().astype(np.float64) - mean)[box]
    assert np.mean(deviation <= 2.576 * tolerance) >= 0.99  # a normal error within 2.576 SE 99 % of the time
    assert sample_in_rounds(_run, 10, 2000, tolerance)[1] == rounds  # same seed, same rounds and T


def test_next_sample_count_follows_one_over_root_t_and_stops_at_the_maximum():
    assert next_sample_count(10, 0.04, 0.02, 1000) == 44  # 10 * 4 * 1.1
    assert next_sample_count(10, 0.0201, 0.02, 1000) == 12
    assert next_sample_count(10, 0.04, 0.02, 20) == 20


def test_no_error_without_random_samples():
    plan = [SampleSpec(0)]
    result = run_sliding_window(_volume(), [ThresholdNet(GAIN, Q).eval()], plan, 2, WindowConfig(WINDOW, 0.0))
    assert result.errors is None and mc_error(result, SPACING) is None
    assert foreground_box(np.zeros((4, 5, 6)), SPACING) == (slice(0, 4), slice(0, 5), slice(0, 6))
    assert torch.is_tensor(result.mean_p)


def test_window_errors_match_the_direct_computation_for_three_classes():
    from SegUncertaintyLib.inference.mc_error import class_pairs, window_errors

    t = 7
    p = torch.softmax(torch.randn(t, 3, 4, 5, 6, generator=torch.Generator().manual_seed(1)) * 2, dim=1).double()
    mean = p.mean(0)
    cross = torch.stack([(p[:, k] * p[:, l]).mean(0) for k, l in class_pairs(3)])  # noqa: E741
    errors = window_errors(mean, (p * p).mean(0), cross, t)
    g = -(p * torch.log(mean)[None]).sum(1)  # (T, *w)
    assert torch.allclose(errors["entropy"], g.std(0) / math.sqrt(t) / math.log(3), atol=1e-9)
    assert torch.allclose(errors["probability"], (p.std(0) / math.sqrt(t)).amax(0), atol=1e-9)
