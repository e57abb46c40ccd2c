"""Inference backends of card models: torch (the reference), ONNX Runtime and OpenVINO on the exported graph
with explicit dropout-mask inputs. The same seed gives the same Monte Carlo samples on every backend; the
accuracy guard of ``--backend auto`` falls back to torch fp32; the caches follow the weights."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from SegUncertaintyLib.cli import main
from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.backends import choice as backend_choice
from SegUncertaintyLib.inference.backends.choice import choose_backend, make_runners, probe_window
from SegUncertaintyLib.inference.backends.export import exported_graphs, graph_key
from SegUncertaintyLib.inference.sliding_window import WindowConfig, run_sliding_window
from SegUncertaintyLib.models.card import write_card
from SegUncertaintyLib.models.dropout import SampleMasks, set_dropout
from SegUncertaintyLib.models.loader import load_model
from Testing.support.phantoms import sphere_phantom

pytestmark = [pytest.mark.onnx, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PATCH = (16, 16, 16)
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16], "strides": [2],
        "num_res_units": 1, "norm": "instance", "dropout": 0.3}
CPU = torch.device("cpu")
FP32_TOLERANCE = 1e-4  # max |delta p| of an fp32 runtime against torch fp32: float reassociation only
BF16_TOLERANCE = 0.05  # bf16 keeps 8 significant bits


@pytest.fixture(scope="module")
def unet_card(tmp_path_factory):
    """A card model of two seeded MONAI UNets with elementwise dropout (p = 0.3), 16^3 windows."""
    folder = tmp_path_factory.mktemp("unet_card")
    for m in range(2):
        torch.manual_seed(10 + m)
        net = UNet(**UNET)
        with torch.no_grad():  # larger weights than the init: outputs far from 0.5, dropout visible
            for p in net.parameters():
                p.mul_(3.0)
        torch.save(net.state_dict(), folder / f"member{m}.pt")
    write_card({"name": "unet-dropout", "labels": {"0": "background", "1": "sphere"},
                "preprocessing": {"spacing_mm": [3.0, 3.0, 3.0], "orientation": "RAS",
                                  "intensity": {"method": "zscore"}},
                "patch_size": list(PATCH), "methods": ["softmax", "mc_dropout", "ensemble", "tta"],
                "tta_flips": ["LR"], "architecture": {"type": "monai", "name": "UNet", "kwargs": UNET},
                "members": [{"file": f"member{m}.pt", "sha256": ""} for m in range(2)]}, folder)
    return folder


def backend_options(backend: str, precision: str = "auto") -> SegmentOptions:
    return SegmentOptions(backend=backend, precision=precision).check()


@pytest.mark.parametrize(("backend", "precision", "tolerance"), [
    ("onnxruntime", "fp32", FP32_TOLERANCE), ("openvino", "fp32", FP32_TOLERANCE), ("openvino", "bf16", BF16_TOLERANCE),
    ("torch", "bf16", BF16_TOLERANCE)])
@pytest.mark.parametrize("dropout", [False, True], ids=["dropout_off", "dropout_masks"])
@torch.no_grad()
def test_each_backend_gives_torch_fp32_probabilities(unet_card, backend, precision, tolerance, dropout):
    """Two samples (sample indices 0 and 5) of both members on a phantom window: the softmax of the backend
    equals torch fp32's with the same masks within its precision's tolerance, and not by chance (the two
    samples differ from each other by far more)."""
    model = load_model(unet_card)
    choice = choose_backend(model, backend_options(backend, precision), CPU)
    assert (choice.backend, choice.precision, choice.chosen_by) == (backend, precision, "requested")
    assert choice.max_abs_dp <= tolerance
    reference = choose_backend(model, backend_options("torch", "fp32"), CPU)
    x = probe_window(model.card).repeat(2, 1, 1, 1, 1)
    for net, runner, ref_runner in zip(model.networks, make_runners(model, choice), make_runners(model, reference),
                                       strict=True):
        set_dropout(net, dropout)
        masks = (lambda: SampleMasks(7, 3, [0, 5])) if dropout else (lambda: None)
        got = torch.softmax(runner(x, masks()), 1)
        want = torch.softmax(ref_runner(x, masks()), 1)
        set_dropout(net, False)
        assert float((got - want).abs().max()) <= tolerance
        if dropout:
            assert float((want[0] - want[1]).abs().max()) > 20 * FP32_TOLERANCE


def phantom_volume() -> np.ndarray:
    image = sphere_phantom(size=(22, 20, 18), spacing=(3.0, 3.0, 3.0), radius_mm=20.0)
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return (array - array.mean()) / array.std()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_same_seed_same_mc_dropout_samples_on_every_backend(unet_card, backend):
    """MC dropout, T = 4, 8 overlapping windows, seed 3: the runtime's mean probability and per-sample
    labels equal torch's up to float tolerance (labels may differ only where p is within 0.01 of 0.5); a
    different seed differs by far more."""
    model = load_model(unet_card)
    volume, plan = phantom_volume(), plan_samples("mc_dropout", 2, 4)
    config = WindowConfig(PATCH, overlap=0.5, max_batch=4, device="cpu", seed=3)

    def run(name: str, seed: int = 3):
        choice = choose_backend(model, backend_options(name, "fp32"), CPU)
        return run_sliding_window(volume, model.networks, plan, 2, dataclasses.replace(config, seed=seed),
                                  runners=make_runners(model, choice))

    ref, got, other = run("torch"), run(backend), run("torch", seed=4)
    delta = float((got.mean_p - ref.mean_p).abs().max())
    assert delta <= FP32_TOLERANCE
    assert float((other.mean_p - ref.mean_p).abs().max()) > 100 * FP32_TOLERANCE
    ref_bits, got_bits = ref.sample_bits.numpy(), got.sample_bits.numpy()
    near_half = (ref.mean_p[1] - 0.5).abs().numpy() < 0.01
    differs = np.unpackbits(ref_bits ^ got_bits, axis=1).any(axis=(0, 1))
    assert not (differs & ~near_half).any()
    for name in ref.maps:
        assert float((got.maps[name] - ref.maps[name]).abs().max()) <= 10 * FP32_TOLERANCE


def test_the_guard_falls_back_to_torch_fp32(unet_card, monkeypatch):
    """auto with a guard of 1e-9: no runtime reproduces torch fp32 that closely, so torch fp32 runs; with the
    default guard an fp32 runtime passes (its figure is <= 0.01) and the figures are recorded."""
    model = load_model(unet_card)
    strict = choose_backend(model, backend_options("auto"), CPU, guard=1e-9)
    assert (strict.backend, strict.precision, strict.max_abs_dp) == ("torch", "fp32", 0.0)
    assert {"onnxruntime/fp32", "openvino/fp32"} <= set(strict.probe)
    assert all(f["max_abs_dp"] > 1e-9 for name, f in strict.probe.items() if name != "torch/fp32")
    usual = choose_backend(model, backend_options("auto"), CPU)
    assert usual.chosen_by == "probe" and usual.max_abs_dp <= backend_choice.GUARD
    assert usual.probe[f"{usual.backend}/{usual.precision}"]["ms"] == min(
        f["ms"] for f in usual.probe.values() if f["max_abs_dp"] <= backend_choice.GUARD)
    again = choose_backend(model, backend_options("auto"), CPU)
    assert again.chosen_by == "cached probe" and (again.backend, again.precision) == (usual.backend, usual.precision)


def test_caches_follow_the_weights(unet_card, tmp_path):
    """Another member's weights give another graph key, another probe key and a new export; the cached
    graph's sha256 is recorded and checked."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(unet_card, other)
    state = torch.load(other / "member1.pt")
    state = {k: v + 0.01 if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, other / "member1.pt")
    data = json.loads((other / "card.json").read_text())
    write_card(data, other)
    first, second = load_model(unet_card), load_model(other)
    assert graph_key(first.card) != graph_key(second.card)
    options = backend_options("auto")
    cands = backend_choice.candidates(first, "auto")
    assert backend_choice._cache_key(first, options, cands, 0.01) != backend_choice._cache_key(second, options,
                                                                                               cands, 0.01)
    graphs = exported_graphs(first.card, first.networks)
    record = json.loads((graphs[0].path.parent / "graph.json").read_text())
    assert [m["sha256"] for m in record["members"]] == [g.sha256 for g in graphs]
    graphs[0].path.write_bytes(b"damaged")  # a damaged cached graph is exported again
    again = exported_graphs(first.card, first.networks)
    assert again[0].sha256 == graphs[0].sha256 and again[0].path.read_bytes() != b"damaged"


def test_missing_openvino(unet_card, monkeypatch, tmp_path, capsys):
    """Without OpenVINO: --backend openvino exits 2 with one line naming the missing package; auto skips it."""
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    model = load_model(unet_card)
    assert all(b != "openvino" for b, _ in backend_choice.candidates(model, "auto"))
    with pytest.raises(UsageError, match="openvino is not installed"):
        choose_backend(model, backend_options("openvino"), CPU)
    image = tmp_path / "image.nii.gz"
    sitk.WriteImage(sphere_phantom(size=(20, 20, 20), spacing=(3.0, 3.0, 3.0)), str(image))
    code = main(["segment", str(image), "--model", str(unet_card), "--backend", "openvino", "--out",
                 str(tmp_path / "out"), "--progress", "none"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "openvino is not installed" in err[0]
    assert not (tmp_path / "out").exists()


def test_options_refuse_impossible_pairs():
    for backend, precision, device in [("onnxruntime", "bf16", "auto"), ("openvino", "fp16", "auto"),
                                       ("openvino", "fp32", "cuda"), ("torch", "fp16", "cpu"), ("tensorrt", "auto",
                                                                                                "auto")]:
        with pytest.raises(UsageError):
            SegmentOptions(backend=backend, precision=precision, device=device).check()


def test_manifest_records_backend_precision_and_guard(unet_card, tmp_path):
    image = tmp_path / "image.nii.gz"
    sitk.WriteImage(sphere_phantom(size=(20, 20, 20), spacing=(3.0, 3.0, 3.0)), str(image))
    code = main(["segment", str(image), "--model", str(unet_card), "--backend", "onnxruntime", "--method",
                 "mc_dropout", "--samples", "4", "--out", str(tmp_path / "out"), "--progress", "none"])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert code == 0
    record = manifest["inference"]
    assert (record["backend"], record["precision"], record["guard"]) == ("onnxruntime", "fp32", 0.01)
    assert 0 < record["max_abs_dp"] <= FP32_TOLERANCE and record["mask_generator"]
    assert manifest["settings"]["backend"] == "onnxruntime"


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@torch.no_grad()
def test_channel_and_elementwise_masks_are_graph_inputs(unet_card, backend, tmp_path, monkeypatch):
    """A network with channel (Dropout3d) and elementwise dropout exported with its masks as inputs: fed the
    masks of SampleMasks, the runtime gives torch's hooked pass (same seed, window, samples) within fp32
    tolerance, and the channel masks are shared by two windows of a sample while the elementwise ones are not."""
    from torch import nn

    from SegUncertaintyLib.inference.backends.runners import TorchRunner, make_runner

    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path))  # a graph cache of its own: the key is the card's
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.Tanh(), nn.Dropout3d(0.5), nn.Conv3d(6, 6, 3, padding=1),
                        nn.Tanh(), nn.Dropout(0.3), nn.Conv3d(6, 2, 1)).eval()
    card = load_model(unet_card).card
    graph = exported_graphs(card, [net])[0]
    assert [(c.elementwise, c.p) for c in graph.layout] == [(False, 0.5), (True, 0.3)]
    runner = make_runner(backend, "fp32", net, graph, torch.get_num_threads())
    x = probe_window(card).repeat(2, 1, 1, 1, 1)
    set_dropout(net, True)
    want = TorchRunner(net, "fp32")(x, SampleMasks(1, 4, [2, 3]))
    got = runner(x, SampleMasks(1, 4, [2, 3]))
    set_dropout(net, False)
    assert float((got - want).abs().max()) <= 1e-4 * max(1.0, float(want.abs().max()))
    first, other_window = SampleMasks(1, 4, [2]).scaled(graph.layout), SampleMasks(1, 5, [2]).scaled(graph.layout)
    assert torch.equal(first[0], other_window[0]) and not torch.equal(first[1], other_window[1])
