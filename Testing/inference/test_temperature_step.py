"""The temperature step on real runs: t applied equals a network whose logits were divided by t; t = 1 is
bit-identical to a run without the step; the collected per-pass logits are the run's own passes; the fit on
them recovers a known over-confidence."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy.special import softmax

from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.evaluation.temperature_fit import fit_run_temperature
from SegUncertaintyLib.inference import sliding_window
from SegUncertaintyLib.inference.pass_logits import collect_pass_logits
from SegUncertaintyLib.inference.preprocessing import to_model_space
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.inference.sliding_window import WindowConfig, run_sliding_window
from SegUncertaintyLib.inference.tempering import temper_logits, temper_probabilities
from SegUncertaintyLib.models.loader import load_model
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import write_threshold_model

GAINS = (8.0, 6.0, 10.0)


def arrays(outputs):
    """Every voxel output of a run as arrays: probabilities, maps, segmentation."""
    out = {f"p:{k}": sitk.GetArrayFromImage(v) for k, v in outputs.probabilities.items()}
    out |= {f"map:{k}": sitk.GetArrayFromImage(v) for k, v in outputs.maps.items()}
    return out | {"segmentation": sitk.GetArrayFromImage(outputs.segmentation)}


@pytest.fixture(scope="module")
def image():
    return sphere_phantom((20, 20, 20), (3.0, 3.0, 3.0), 18.0, 5.0, origin=(0.0, 0.0, 0.0), noise=0.1, seed=3)


@pytest.mark.parametrize("method", [pytest.param("mc_dropout", marks=pytest.mark.slow), "ensemble"])
def test_temperature_equals_a_last_layer_scaled_by_one_over_t(tmp_path, image, method):
    t = 2.5
    plain = load_model(write_threshold_model(tmp_path / "plain", gains=GAINS))
    scaled = load_model(write_threshold_model(tmp_path / "scaled", gains=tuple(g / t for g in GAINS)))
    options = SegmentOptions(method=method, samples=4 if method == "mc_dropout" else None)
    tempered_run = segment_image(image, plain, SegmentOptions(**{**options.as_dict(), "temperature": t}))
    assert tempered_run.inference["temperature"] == t  # recorded for the manifest
    tempered = arrays(tempered_run)
    expected = arrays(segment_image(image, scaled, options))
    untempered = arrays(segment_image(image, plain, options))
    for key, value in expected.items():
        np.testing.assert_allclose(tempered[key], value, atol=2e-6, err_msg=key)
    assert not np.allclose(tempered["p:sphere"], untempered["p:sphere"], atol=1e-3)  # t did change the run


def test_t_one_is_bit_identical_to_a_run_without_the_step(tmp_path, image, monkeypatch):
    model = load_model(write_threshold_model(tmp_path / "m"))
    options = SegmentOptions(method="mc_dropout", samples=2, temperature=1.0)
    with_step = arrays(segment_image(image, model, options))
    monkeypatch.setattr(sliding_window._WindowSampler, "logit_step", lambda self, logits: logits)
    without = arrays(segment_image(image, model, options))
    for key, value in without.items():
        assert np.array_equal(with_step[key], value), key
    z = torch.randn(2, 3, 4)
    assert temper_logits(z, 1.0) is z and temper_probabilities(z, 1.0) is z


def test_tempered_probabilities_are_the_softmax_of_tempered_logits():
    z = np.random.default_rng(0).normal(0, 4, (3, 50)).astype(np.float32)
    p = softmax(z, axis=0)
    assert np.allclose(temper_probabilities(p, 0.7).numpy(), softmax(z / 0.7, axis=0), atol=1e-6)
    assert np.allclose(temper_logits(torch.from_numpy(z), 2.0).numpy(), z / 2.0)
    assert temper_probabilities(np.array([[1.0], [0.0]]), 3.0).numpy().tolist() == [[1.0], [0.0]]


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), True])
def test_a_temperature_out_of_range_is_refused(temperature):
    with pytest.raises(UsageError, match="temperature"):
        SegmentOptions(temperature=temperature).check()


def test_collected_logits_are_the_runs_own_passes(tmp_path):
    """Without window overlap every voxel has one window: the mean softmax of the collected logits is the
    run's mean probability on the model grid (float16 logits: to 1e-3)."""
    image = sphere_phantom((16, 16, 16), (3.0, 3.0, 3.0), 14.0, 5.0, origin=(0.0, 0.0, 0.0), noise=0.1, seed=1)
    model = load_model(write_threshold_model(tmp_path / "m", patch=(8, 8, 8)))
    options = SegmentOptions(method="mc_dropout", samples=6, overlap=0.0, seed=4)
    region = np.zeros((16, 16, 16), bool)
    region[2:14, 3:15, 1:12] = True
    reference = (sitk.GetArrayFromImage(image) > 0.5).astype(np.uint8)
    got = collect_pass_logits(image, model, options, region, reference, cap=500)
    assert got.logits.shape == (6, 2, 500) and got.logits.dtype == np.float16 and got.kind == "logits"
    array, _ = to_model_space(image, model.card)
    plan = plan_samples("mc_dropout", 2, 6, model.card.flip_axes)
    result = run_sliding_window(array, model.networks, plan, 2,
                                WindowConfig(window=(8, 8, 8), overlap=0.0, seed=4))
    mean_p = result.mean_p.reshape(2, -1)[:, got.voxels].numpy()
    assert np.allclose(softmax(got.logits.astype(np.float64), axis=1).mean(0), mean_p, atol=1e-3)
    # the model grid is the input grid flipped to RAS: the labels are the reference at the same points
    assert got.labels.sum() == (sitk.GetArrayFromImage(sitk.DICOMOrient(image, "RAS")) > 0.5).ravel()[
        got.voxels].sum()
    assert int(region.sum()) > 500  # the cap drew a subset


def test_fit_recovers_a_known_over_confidence_and_improves_held_out_nll(tmp_path):
    """Labels drawn from a gain-4 threshold network; the model's gain is 8: over-confident by s = 2."""
    s, gain = 2.0, 8.0
    model = load_model(write_threshold_model(tmp_path / "m", members=1, gains=(gain,)))
    options = SegmentOptions(method="softmax")
    rng = np.random.default_rng(0)
    collected = []
    for _ in range(10):
        values = rng.uniform(0, 1, (16, 16, 16)).astype(np.float32)
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((3.0, 3.0, 3.0))
        fg = 1 / (1 + np.exp(-2 * gain / s * (values - 0.5)))  # softmax of [-g(x-.5), g(x-.5)] / s
        reference = (rng.random(values.shape) < fg).astype(np.uint8)
        got = collect_pass_logits(image, model, options, np.ones(values.shape, bool), reference, cap=10 ** 6)
        collected.append((got.logits, got.labels, got.kind))
    fitted = fit_run_temperature(collected, {1: "fg"})
    assert fitted["value"] == pytest.approx(s, rel=0.03)
    held = fitted["held_out"]
    assert held["after"]["nll"] < held["before"]["nll"] and held["after"]["ece"] < held["before"]["ece"]
    assert all(t == pytest.approx(s, rel=0.05) for t in held["fold_temperatures"])
    assert held["before"]["dice"]["fg"] == held["after"]["dice"]["fg"]  # one pass: the argmax cannot change


@pytest.mark.nnunet
@pytest.mark.slow
def test_whole_volume_temperature_tempers_every_pass_before_the_mean(tmp_path):
    """nnU-Net's passes arrive as probabilities p = softmax(z): the run's mean probability with t equals the
    mean over its passes of softmax(ln p / t) = softmax(z / t), computed here from the adapter's own passes.
    (A copy whose last layer is divided by t is no oracle here: nnU-Net sums its windows' logits in float16,
    which rounds this tiny network's sums to whole numbers, differently for scaled logits.)"""
    from SegUncertaintyLib.inference.sliding_window import pick_device
    from Testing.support.nnunet_tiny import ct_like_image, make_nnunet_model

    t = 0.6
    folder, _ = make_nnunet_model(tmp_path / "plain", folds=2)
    model, image = load_model(folder), ct_like_image(seed=2)
    tempered = segment_image(image, model, SegmentOptions(method="ensemble", temperature=t))
    assert tempered.inference == {"temperature": t, "cpu_threads": torch.get_num_threads()}  # no backend choice
    prepared = model.prepare(image, pick_device("cpu"), None)
    passes = [model.run_pass(prepared, spec) for spec in model.plan("ensemble", None)]
    with np.errstate(divide="ignore"):
        expected = np.mean([softmax(np.log(p.astype(np.float64)) / t, axis=0) for p in passes], axis=0)
    compared = 0
    for k, name in model.description.labels.items():
        if int(k):
            got = sitk.GetArrayFromImage(tempered.probabilities[name])
            np.testing.assert_allclose(got, expected[int(k)], atol=1e-5, err_msg=name)
            compared += 1
    assert compared == 2
    untempered = np.mean(passes, axis=0)
    assert np.abs(expected - untempered).max() > 0.05  # t did change the run
