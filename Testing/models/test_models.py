"""The model contract (issue #14 item 3), model management (item 4) and no network during a run (#9 item 2)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
import warnings
from pathlib import Path

import monai.networks.nets as monai_nets
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.networks.nets import UNet

from SegUncertaintyLib import cli
from SegUncertaintyLib.core.errors import ModelError, UsageError
from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.model_grid import check_method
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.models import catalog, registry
from SegUncertaintyLib.models.card import card_schema, load_card, sha256_file, write_card
from SegUncertaintyLib.models.loader import DEFAULT_MODEL, load_model
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import ThresholdNet, write_threshold_model

ROOT = Path(__file__).resolve().parents[2]


# -- schema ------------------------------------------------------------------------------------------------
def test_schema_network_allow_list_matches_monai_and_downloads_nothing():
    schema = card_schema()
    networks = schema["$defs"]["networks"]
    monai_then = schema["properties"]["architecture"]["allOf"][1]["then"]
    assert monai_then["properties"]["name"]["enum"] == list(networks)
    for name, spec in networks.items():
        parameters = inspect.signature(getattr(monai_nets, name)).parameters
        assert set(spec["properties"]) <= set(parameters), name  # every allowed argument exists
        fetching = r"pretrain.*|.*url|weights?|.*checkpoint.*|.*_(file|path)|load_from"
        assert not any(re.fullmatch(fetching, a) for a in spec["properties"]), name
    assert "FlexibleUNet" not in networks  # its pretrained backbone downloads weights


def test_readme_card_description_names_every_schema_field():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Model card", 1)[1].split("\n## ", 1)[0]
    described = set(re.findall(r"^\| `([a-z_]+)`", section, re.M))
    assert described == set(card_schema()["properties"])


def test_bundled_card_declares_its_contract():
    card = load_card(catalog.BUNDLED_DIR / "brainmask_t1")
    assert card.output == "logits" and card.tta_flips == ("LR",)
    assert card.flip_axes == (2,)  # RAS grid: x points to R, the array is (z, y, x)
    card.verify()


@pytest.mark.parametrize("orientation, flips, axes", [
    ("RAS", ["LR"], (2,)), ("RAS", ["SI"], (0,)), ("LPS", ["AP"], (1,)), ("SAR", ["LR"], (0,)),
    ("PIL", ["LR", "AP"], (0, 2)),
])
def test_declared_flips_map_to_window_axes(threshold_model, orientation, flips, axes):
    data = json.loads((threshold_model / "card.json").read_text())
    data["preprocessing"]["orientation"], data["tta_flips"] = orientation, flips
    write_card(data, threshold_model)
    assert load_card(threshold_model).flip_axes == axes


# -- TTA uses only the declared flips ----------------------------------------------------------------------
def test_tta_plan_uses_only_declared_flips():
    card = load_card(catalog.BUNDLED_DIR / "brainmask_t1")
    plan = plan_samples("tta", 3, None, card.flip_axes)
    assert [s.flip for s in plan] == [(), (2,)]
    assert {s.flip for s in plan_samples("ensemble+tta", 3, None, card.flip_axes)} == {(), (2,)}
    with pytest.raises(UsageError, match=r"2 to 2 \(combinations of the flips"):
        plan_samples("tta", 1, 4, card.flip_axes)
    assert len(plan_samples("tta", 1, None)) == 8  # a model invariant to every flip keeps all 8


def test_tta_run_flips_only_the_declared_axis(tmp_path):
    """A network that sees only the y (A-P) flip: declared LR only, TTA must equal one unflipped pass."""
    folder = write_threshold_model(tmp_path / "m", members=1)
    data = json.loads((folder / "card.json").read_text())
    data["tta_flips"] = ["LR"]
    write_card(data, folder)
    image = sphere_phantom(size=(24, 24, 24), spacing=(3.0, 3.0, 3.0), noise=0.0)
    model = load_model(folder)

    class Asymmetric(torch.nn.Module):  # logit depends on the y coordinate: not A-P symmetric
        def forward(self, x):
            ramp = torch.linspace(-2, 2, x.shape[3]).view(1, 1, 1, -1, 1)
            return torch.cat([-(x + ramp), x + ramp], 1)

    model.networks = [Asymmetric()]
    tta = segment_image(image, model, SegmentOptions(method="tta"))
    soft = segment_image(image, model, SegmentOptions(method="softmax"))
    assert tta.n_samples == 2
    a = sitk.GetArrayFromImage(tta.probabilities["sphere"])
    b = sitk.GetArrayFromImage(soft.probabilities["sphere"])
    np.testing.assert_allclose(a, b, atol=1e-5)  # the LR flip is an exact symmetry here; an AP flip is not


# -- logits or probabilities: never a double softmax -------------------------------------------------------
class SoftmaxThreshold(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ThresholdNet()

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


def test_probability_output_is_not_softmaxed_twice(tmp_path):
    logits_model = write_threshold_model(tmp_path / "logits", members=1)
    prob_model = write_threshold_model(tmp_path / "probs", members=1)
    torch.jit.script(SoftmaxThreshold().eval()).save(str(prob_model / "member0.pt"))
    data = json.loads((prob_model / "card.json").read_text())
    data["output"] = "probabilities"
    write_card(data, prob_model)
    image = sphere_phantom(size=(20, 20, 20), spacing=(3.0, 3.0, 3.0))
    p_logits = segment_image(image, load_model(logits_model), SegmentOptions(method="softmax")).probabilities["sphere"]
    p_probs = segment_image(image, load_model(prob_model), SegmentOptions(method="softmax")).probabilities["sphere"]
    a, b = sitk.GetArrayFromImage(p_logits), sitk.GetArrayFromImage(p_probs)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert a.max() > 0.95  # a second softmax would squash these into [0.27, 0.73]


# -- inactive dropout is refused for MC dropout ------------------------------------------------------------
def _model_with(tmp_path, net_file_writer, architecture) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    net_file_writer(folder / "net.pt")
    write_card({"name": "user-model", "labels": {"0": "bg", "1": "fg"},
                "preprocessing": {"spacing_mm": [2, 2, 2], "intensity": {"method": "none"}},
                "patch_size": [16, 16, 16], "methods": ["softmax", "mc_dropout"],
                "architecture": architecture, "members": [{"file": "net.pt", "sha256": "0" * 64}]}, folder)
    return folder


def test_traced_torchscript_dropout_is_detected_and_refused(tmp_path):
    def traced(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.trace(ThresholdNet().eval(), torch.rand(1, 1, 16, 16, 16)).save(str(path))

    model = load_model(_model_with(tmp_path, traced, {"type": "torchscript"}))
    check_method(model, "softmax")
    with pytest.raises(ModelError, match="dropout is inactive .*identical"):
        check_method(model, "mc_dropout")


def test_monai_unet_with_p0_dropout_is_refused_and_p_positive_accepted(tmp_path):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2]}
    model = load_model(_model_with(tmp_path, lambda p: torch.save(UNet(**kwargs).state_dict(), p),
                                   {"type": "monai", "name": "UNet", "kwargs": kwargs}))
    assert any(isinstance(m, torch.nn.Dropout) for m in model.networks[0].modules())  # layers exist, p = 0
    with pytest.raises(ModelError, match="dropout is inactive"):
        check_method(model, "mc_dropout")
    ok = load_model(write_threshold_model(tmp_path / "scripted", members=1))
    check_method(ok, "mc_dropout")  # scripted ThresholdNet: dropout p = 0.2 changes the samples


def test_dropout_probe_leaves_global_rng_alone(threshold_model):
    model = load_model(threshold_model)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_method(model, "mc_dropout")
    assert torch.equal(torch.rand(3), expected)


# -- no network, ever --------------------------------------------------------------------------------------
_NETWORK_EVENTS: list[str] = []
_WATCHING = [False]


def _audit(event, args):
    if _WATCHING[0] and event.split(".")[0] in ("socket", "urllib", "http", "ftplib"):
        _NETWORK_EVENTS.append(event)


sys.addaudithook(_audit)  # cannot be removed; records only while _WATCHING


def test_no_socket_is_opened_during_segment_model_load_and_add(tmp_path, monkeypatch, threshold_model):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    image = tmp_path / "phantom.nii.gz"
    sitk.WriteImage(sphere_phantom(size=(16, 16, 16)), str(image))
    hostile = write_threshold_model(tmp_path / "hostile", members=1)
    data = json.loads((hostile / "card.json").read_text())
    torch.save(UNet(3, 1, 2, [4, 8], [2]).state_dict(), hostile / "member0.pt")
    data["architecture"] = {"type": "monai", "name": "UNet", "kwargs": {
        "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
        "pretrained_url": "http://127.0.0.1:9/weights.pt"}}
    data["members"][0]["sha256"] = sha256_file(hostile / "member0.pt")
    (hostile / "card.json").write_text(json.dumps(data))
    _NETWORK_EVENTS.clear()
    _WATCHING[0] = True
    try:
        import socket

        socket.socket().close()  # the hook sees sockets: this one must be recorded
        seen_probe = list(_NETWORK_EVENTS)
        _NETWORK_EVENTS.clear()
        assert cli.main(["segment", str(image), "--model", str(threshold_model), "--method", "ensemble+mc_dropout",
                         "--samples", "2", "--out", str(tmp_path / "out"), "--progress", "none",
                         "--no-overview"]) == 0
        load_model(DEFAULT_MODEL)
        assert cli.main(["models", "add", str(threshold_model), "--name", "mine"]) == 0
        assert cli.main(["models", "check", str(hostile)]) == 4
        assert cli.main(["segment", str(image), "--model", str(hostile), "--out", str(tmp_path / "out2"),
                         "--progress", "none"]) == 4
    finally:
        _WATCHING[0] = False
    assert "socket.__new__" in seen_probe
    assert _NETWORK_EVENTS == []


# -- formats -----------------------------------------------------------------------------------------------
def test_detect_format_from_folder_contents(tmp_path, threshold_model):
    assert registry.detect_format(threshold_model) == "card"
    assert registry.detect_format(threshold_model / "card.json") == "card"
    nnunet = tmp_path / "Dataset001__nnUNetPlans__3d_fullres"
    (nnunet / "fold_0").mkdir(parents=True)
    (nnunet / "dataset.json").write_text("{}")
    (nnunet / "plans.json").write_text("{}")
    assert registry.detect_format(nnunet) == "nnunet"
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    assert registry.detect_format(bundle) == "monai_bundle"
    onnx = tmp_path / "onnx"
    onnx.mkdir()
    (onnx / "model.onnx").write_bytes(b"")
    (onnx / "card.json").write_text("{}")
    assert registry.detect_format(onnx) == "onnx"
    assert registry.detect_format(tmp_path) == "nnunet"  # a dataset folder holding one trained-model folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a model folder"):
        registry.detect_format(tmp_path / "empty")


def _replace_format(monkeypatch, record):
    """Put ``record`` in the registry in place of the format of the same name (or last, for a new one)."""
    formats = [f for f in registry.MODEL_FORMATS if f.name != record.name]
    at = next((i for i, f in enumerate(registry.MODEL_FORMATS) if f.name == record.name), len(formats))
    monkeypatch.setattr(registry, "MODEL_FORMATS", (*formats[:at], record, *formats[at:]))


def test_registered_checker_is_used_by_models_check_and_list(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    bundle = tmp_path / "home" / "models" / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "configs" / "inference.json").write_text("{}")
    assert cli.main(["models", "check", str(bundle)]) == 4  # the bundle adapter's own checker
    assert capsys.readouterr().err.strip().endswith("bundle: no configs/metadata.json (labels and input "
                                                    "channels are read from it)")
    original = registry.format_named("monai_bundle")
    _replace_format(monkeypatch, dataclasses.replace(original, module=".adapters.not_installed"))
    assert cli.main(["models", "check", str(bundle)]) == 4
    assert "MONAI bundle support is not installed" in capsys.readouterr().err
    (tmp_path / "spleen_adapter.py").write_text(
        "from SegUncertaintyLib.models.registry import ModelSummary\n"
        "def check(path):\n"
        "    return ModelSummary('spleen', 'monai_bundle', 'CT', {0: 'background', 1: 'spleen'}, 1, ('softmax',),\n"
        "                        ('configs/inference.json',))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    _replace_format(monkeypatch, dataclasses.replace(original, module="spleen_adapter"))
    assert cli.main(["models", "check", str(bundle)]) == 0
    assert "spleen: ok (monai_bundle" in capsys.readouterr().out
    listed = {e.name: e for e in catalog.list_models()}
    assert listed["bundle"].format == "monai_bundle" and listed["bundle"].error is None  # named by its folder


MARKER_ADAPTER = """
from pathlib import Path

from SegUncertaintyLib.models.description import ModelDescription
from SegUncertaintyLib.models.registry import ModelSummary

LABELS = {0: "background", 1: "marked"}


def check(path):
    text = (Path(path) / "marker.txt").read_text()
    if text != "ok":
        from SegUncertaintyLib.core.errors import ModelError
        raise ModelError(f"marker model {Path(path).name}: marker says {text!r}")
    return ModelSummary("marker-model", "marker", "MR", LABELS, 1, ("softmax",), ("marker.txt",), "1", "marking")


class MarkerModel:
    format = "marker"

    def __init__(self, path, name):
        self.description = ModelDescription(name or "marker-model", "1", "marking", "MR", LABELS, ("softmax",),
                                            "marker", Path(path), ())


def load(path, name=None):
    check(path)
    return MarkerModel(path, name)
"""


def test_a_new_format_takes_one_adapter_module_and_one_registry_line(tmp_path, monkeypatch, capsys):
    """A fake format (a folder with marker.txt): detected, checked, listed, installed and loaded by name."""
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    (tmp_path / "marker_adapter.py").write_text(MARKER_ADAPTER)
    monkeypatch.syspath_prepend(str(tmp_path))
    marker = registry.ModelFormat("marker", "Marker format", "marker_adapter", lambda p: (p / "marker.txt").is_file())
    monkeypatch.setattr(registry, "MODEL_FORMATS", (*registry.MODEL_FORMATS, marker))
    folder = tmp_path / "src" / "marked"
    folder.mkdir(parents=True)
    (folder / "marker.txt").write_text("ok")
    assert registry.detect_format(folder) == "marker" and registry.format_label("marker") == "Marker format"
    assert registry.check_model(folder).name == "marker-model"
    assert cli.main(["models", "add", str(folder), "--name", "my-marker"]) == 0
    listed = {e.name: e for e in catalog.list_models()}
    assert listed["my-marker"].format == "marker" and listed["my-marker"].error is None
    model = load_model("my-marker")
    assert model.format == "marker" and model.description.name == "my-marker"
    assert model.description.folder == tmp_path / "home" / "models" / "my-marker"
    (folder / "marker.txt").write_text("broken")
    capsys.readouterr()
    assert cli.main(["models", "check", str(folder)]) == 4
    assert "marker says 'broken'" in capsys.readouterr().err


# -- management --------------------------------------------------------------------------------------------
def test_add_list_use_and_remove_a_model(tmp_path, monkeypatch, capsys, threshold_model):
    home = tmp_path / "home"
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(home))
    (threshold_model / "notes.txt").write_text("not part of the model")
    assert cli.main(["models", "add", str(threshold_model), "--name", "spheres"]) == 0
    installed = home / "models" / "spheres"
    assert sorted(p.name for p in installed.iterdir()) == ["card.json", "member0.pt", "member1.pt"]
    registry = json.loads((home / "models" / "installed.json").read_text())["models"]["spheres"]
    assert registry["files"] == {name: sha256_file(installed / name) for name in registry["files"]}
    assert registry["files"]["member0.pt"] == sha256_file(threshold_model / "member0.pt")
    assert load_model("spheres").card.name == "spheres"  # usable by name
    capsys.readouterr()
    assert cli.main(["models", "list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["spheres"] == {**rows["spheres"], "format": "card", "status": "ok", "members": 2,
                               "labels": {"0": "background", "1": "sphere"}, "modality": "synthetic",
                               "methods": ["softmax", "mc_dropout", "ensemble", "tta"], "source": "user"}
    assert rows[DEFAULT_MODEL]["source"] == "bundled"
    (installed / "my-notes.txt").write_text("the user's own file")
    assert cli.main(["models", "remove", "spheres"]) == 0
    assert sorted(p.name for p in installed.iterdir()) == ["my-notes.txt"]  # only what add created is gone
    assert "spheres" not in json.loads((home / "models" / "installed.json").read_text())["models"]
    assert "my-notes.txt" in capsys.readouterr().out


def test_broken_user_model_is_listed_with_its_reason_and_hides_nothing(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(home))
    write_threshold_model(home / "models" / "good", members=1)
    broken = write_threshold_model(home / "models" / "broken", members=1)
    (broken / "member0.pt").write_bytes(b"tampered")
    (home / "models" / "junk").mkdir()
    assert cli.main(["models"]) == 0  # the old form still lists
    out = capsys.readouterr().out
    assert "threshold-good" in out and DEFAULT_MODEL in out
    assert "junk  BROKEN (unknown format): " in out and "not a model folder" in out
    assert cli.main(["models", "list", "--verify"]) == 4
    captured = capsys.readouterr()
    assert "threshold-broken  BROKEN" not in captured.out  # listed by folder name with its reason
    assert "broken  BROKEN (card): Model 'threshold-broken': checksum mismatch" in captured.out
    assert captured.err.strip() == "seguncertainty: error: 2 model(s) failed the check: broken, junk"
    assert set(catalog.available_models()) == {DEFAULT_MODEL, "abdomen-ct-demo", "threshold-good", "threshold-broken"}
    load_model(DEFAULT_MODEL)  # the default model still works


def test_methods_are_parsed_in_one_place_with_one_error_type_per_fault():
    from SegUncertaintyLib.core.methods import DEFAULT_METHOD, METHOD_LABELS, check_capable, count_passes, parse_method

    m = parse_method("ensemble+tta")
    assert (m.ensemble, m.dropout, m.tta, m.parts) == (True, False, True, ("ensemble", "tta"))
    assert m.label == METHOD_LABELS["ensemble+tta"] == "Ensemble + TTA" and DEFAULT_METHOD == "mc_dropout"
    assert parse_method("softmax").parts == ("softmax",) and not parse_method("softmax").ensemble
    for fault in (lambda: parse_method("bootstrap"), lambda: plan_samples("bootstrap", 2),
                  lambda: plan_samples("mc_dropout", 1, 1), lambda: plan_samples("tta", 1, 0)):
        with pytest.raises(UsageError):
            fault()
    for fault in (lambda: plan_samples("ensemble", 1), lambda: plan_samples("tta", 1, None, ()),
                  lambda: check_capable("mc_dropout", "Model x", members=1, flips=True, dropout=False)):
        with pytest.raises(ModelError) as caught:
            fault()
        assert not isinstance(caught.value, UsageError)
    with pytest.raises(ModelError, match="^Model x has one fold$"):
        check_capable("ensemble+tta", "Model x", members=1, flips=True, dropout=True,
                      reasons={"ensemble": "has one fold"})
    assert check_capable("tta", "Model x", members=1, flips=True, dropout=False).tta
    assert count_passes("ensemble+mc_dropout", 3, 2) == 6 and count_passes("ensemble", None, 1) is None


def test_unknown_method_is_a_usage_error_for_every_model_format(threshold_model):
    with pytest.raises(UsageError, match="Unknown method 'bootstrap'"):
        check_method(load_model(threshold_model), "bootstrap")


def test_loading_by_name_scans_the_catalog_once(tmp_path, monkeypatch, threshold_model):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    write_threshold_model(tmp_path / "home" / "models" / "copied", members=1)  # copied by hand: no record
    scanned = []
    summarize = catalog.summarize
    monkeypatch.setattr(catalog, "summarize", lambda folder, verify=False: scanned.append(folder.name)
                        or summarize(folder, verify))
    model = load_model("threshold-copied")
    assert model.description.name == "threshold-copied" and model.description.format == "card"
    assert sorted(scanned) == sorted({*scanned}) and "copied" in scanned  # every folder read once
