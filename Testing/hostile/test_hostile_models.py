"""Hostile and broken MODEL inputs (issue #9 items 2 and 8): cards, weights, symlinks, schema violations and the
options of ``models add/check/remove``. Each case runs the real command line and asserts the exit code, one
line on stderr naming the problem, no traceback, and that no file was written or changed anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

from SegUncertaintyLib import cli
from SegUncertaintyLib.models.card import sha256_file
from Testing.support.tiny_models import ThresholdNet, write_threshold_model

SMALL_UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
              "dropout": 0.2}


def _card(folder: Path) -> dict:
    return json.loads((folder / "card.json").read_text())


def _save_card(folder: Path, data) -> None:
    (folder / "card.json").write_text(json.dumps(data))


def _edit(**changes):
    def apply(folder: Path, tmp: Path):
        data = _card(folder)
        data.update(changes)
        _save_card(folder, data)
    return apply


def _edit_path(path: list, value):
    def apply(folder: Path, tmp: Path):
        data = _card(folder)
        node = data
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        _save_card(folder, data)
    return apply


def _delete(key):
    def apply(folder: Path, tmp: Path):
        data = _card(folder)
        del data[key]
        _save_card(folder, data)
    return apply


def _raw(text: str):
    def apply(folder: Path, tmp: Path):
        (folder / "card.json").write_text(text)
    return apply


def _member_file(name: str):
    return _edit_path(["members", 0, "file"], name)


def _symlinked_member(folder: Path, tmp: Path):
    """member0.pt replaced by a link to a file elsewhere whose sha256 the card carries."""
    outside = tmp / "elsewhere.pt"
    (folder / "member0.pt").rename(outside)
    os.symlink(outside, folder / "member0.pt")
    data = _card(folder)
    data["members"][0]["sha256"] = sha256_file(outside)
    _save_card(folder, data)


def _symlinked_directory(folder: Path, tmp: Path):
    """A member under sub/, where sub is a link to a folder elsewhere."""
    (tmp / "elsewhere").mkdir()
    (folder / "member0.pt").rename(tmp / "elsewhere" / "member0.pt")
    os.symlink(tmp / "elsewhere", folder / "sub")
    data = _card(folder)
    data["members"][0] = {"file": "sub/member0.pt", "sha256": sha256_file(tmp / "elsewhere" / "member0.pt")}
    _save_card(folder, data)


def _monai(kwargs=None, name="UNet", weights=True):
    def apply(folder: Path, tmp: Path):
        args = dict(SMALL_UNET, **(kwargs or {}))
        if weights:
            torch.manual_seed(0)
            torch.save(UNet(**SMALL_UNET).state_dict(), folder / "member0.pt")
        data = _card(folder)
        data["architecture"] = {"type": "monai", "name": name, "kwargs": args}
        data["members"] = [{"file": "member0.pt", "sha256": sha256_file(folder / "member0.pt")}]
        _save_card(folder, data)
    return apply


def _replace_weights(make_net=None, garbage: bytes | None = None, rehash=True):
    def apply(folder: Path, tmp: Path):
        path = folder / "member0.pt"
        if garbage is not None:
            path.write_bytes(garbage)
        else:
            make_net().save(str(path))
        if rehash:
            data = _card(folder)
            data["members"][0]["sha256"] = sha256_file(path)
            _save_card(folder, data)
    return apply


class _Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = ThresholdNet()

    def forward(self, x):
        return torch.softmax(self.net(x), 1)


def _traced_with_dropout():
    with warnings.catch_warnings():  # torch.jit.trace is deprecated, but users have traced files
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.trace(ThresholdNet().eval(), torch.rand(1, 1, 16, 16, 16))


def _three_labels(folder: Path, tmp: Path):
    data = _card(folder)
    data["labels"] = {"0": "background", "1": "sphere", "2": "shell"}
    _save_card(folder, data)


def _nnunet_folder(folder: Path, tmp: Path):
    (folder / "card.json").unlink()
    for name in ("dataset.json", "plans.json"):
        (folder / name).write_text("{}")
    (folder / "fold_0").mkdir()


def _big_card(folder: Path, tmp: Path):
    data = _card(folder)
    data["limitations"] = "x" * (2 << 20)
    _save_card(folder, data)


def _added_by_hand(folder: Path, tmp: Path):
    target = tmp / "home" / "models" / "by-hand"
    target.mkdir(parents=True)
    for p in folder.iterdir():
        (target / p.name).write_bytes(p.read_bytes())


def _nothing(folder: Path, tmp: Path):
    pass


CHECK = ["models", "check", "{model}"]
ADD = ["models", "add", "{model}"]
SEGMENT = ["segment", "{image}", "--model", "{model}", "--out", "{out}", "--progress", "none"]

# id: (how the model is broken, command, exit code, text the one line must contain)
CASES = {
    "card-not-json": (_raw("{name: oops"), CHECK, 4, "not valid JSON"),
    "card-is-a-list": (_raw("[1, 2]"), CHECK, 4, "is not of type 'object'"),
    "card-over-1MB": (_big_card, CHECK, 4, "larger than 1 MB"),
    "missing-labels": (_delete("labels"), CHECK, 4, "field 'labels' is missing"),
    "patch-size-a-string": (_edit(patch_size="64"), CHECK, 4, "field 'patch_size'"),
    "spacing-zero": (_edit_path(["preprocessing", "spacing_mm"], [0, 3, 3]), CHECK, 4,
                     "field 'preprocessing.spacing_mm.0'"),
    "labels-with-a-gap": (_edit(labels={"0": "bg", "2": "fg"}), CHECK, 4, "0..1 without gaps"),
    "label-count-not-network-outputs": (_three_labels, CHECK, 4, "expected (1, 3, 16, 16, 16)"),
    "monai-out-channels-not-labels": (_monai({"out_channels": 3}, weights=True), CHECK, 4,
                                      "'architecture.kwargs.out_channels' is 3"),
    "window-lower-equals-upper": (_edit_path(["preprocessing", "intensity"],
                                             {"method": "window", "lower": 40, "upper": 40}), CHECK, 4,
                                  "lower < upper"),
    "orientation-RRS": (_edit_path(["preprocessing", "orientation"], "RRS"), CHECK, 4, "three different axes"),
    "member-dotdot": (_member_file("../elsewhere.pt"), CHECK, 4, "field 'members.0.file'"),
    "member-absolute": (_member_file("/etc/passwd"), CHECK, 4, "field 'members.0.file'"),
    "member-symlink": (_symlinked_member, CHECK, 4, "symbolic link"),
    "member-under-symlinked-dir": (_symlinked_directory, CHECK, 4, "symbolic link"),
    "sha256-not-hex": (_edit_path(["members", 0, "sha256"], "abc"), CHECK, 4, "field 'members.0.sha256'"),
    "checksum-mismatch": (_replace_weights(garbage=b"changed", rehash=False), CHECK, 4, "checksum mismatch"),
    "weights-garbage": (_replace_weights(garbage=b"\x80not a zip"), CHECK, 4, "Cannot load TorchScript"),
    "monai-pretrained-kwarg": (_monai({"pretrained": True}), CHECK, 4,
                               "field 'architecture.kwargs.pretrained' is not allowed"),
    "monai-pretrained-url": (_monai({"pretrained_url": "http://127.0.0.1:9/x.pt"}), SEGMENT, 4,
                             "'architecture.kwargs.pretrained_url' is not allowed"),
    "monai-network-not-allowed": (_monai(name="FlexibleUNet"), CHECK, 4, "field 'architecture.name'"),
    "two-input-channels": (_monai({"in_channels": 2}), CHECK, 4, "expected 1"),
    "softmax-net-says-logits": (_replace_weights(lambda: torch.jit.script(_Softmaxed())), CHECK, 4,
                                "ends in softmax"),
    "logits-net-says-probabilities": (_edit(output="probabilities"), CHECK, 4, "'probabilities' but"),
    "tta-without-declared-flips": (_delete("tta_flips"), CHECK, 4, "field 'tta_flips' is missing"),
    "unknown-flip-axis": (_edit(tta_flips=["XY"]), CHECK, 4, "field 'tta_flips.0'"),
    "traced-dropout-inactive": (_replace_weights(_traced_with_dropout), CHECK, 4, "dropout is inactive"),
    "name-with-path": (_edit(name="../evil"), ADD, 4, "field 'name'"),
    "add-a-broken-model": (_monai({"pretrained": True}), ADD, 4, "pretrained"),
    "add-bad-name-option": (_nothing, ADD + ["--name", "../x"], 2, "model name '../x' is invalid"),
    "add-name-taken": (_nothing, ADD + ["--name", "brainmask-t1"], 4, "already installed"),
    "add-without-path": (_nothing, ["models", "add"], 2, "the following arguments are required: path"),
    "check-missing-path": (_nothing, ["models", "check", "{tmp}/nowhere"], 4, "does not exist"),
    "check-a-file": (_nothing, ["models", "check", "{model}/member0.pt"], 4, "is a file"),
    "nnunet-without-checkpoint": (_nnunet_folder, CHECK, 4, "fold_0 has no checkpoint_final.pth"),
    "remove-bundled": (_nothing, ["models", "remove", "brainmask-t1"], 4, "bundled model"),
    "remove-unknown": (_nothing, ["models", "remove", "no-such-model"], 4, "No installed model"),
    "remove-added-by-hand": (_added_by_hand, ["models", "remove", "by-hand"], 4, "not installed by"),
}


def _snapshot(root: Path) -> dict:
    """Every path under ``root``: file content hash, link target or folder marker."""
    state = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            state[rel] = "link:" + os.readlink(path)
        elif path.is_dir():
            state[rel] = "dir"
        else:
            state[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_model_gives_one_line_and_changes_nothing(case, tmp_path, monkeypatch, capsys):
    import SimpleITK as sitk

    from Testing.support.phantoms import sphere_phantom

    breaker, argv, code, message = CASES[case]
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    model = write_threshold_model(tmp_path / "model", members=1)
    image = tmp_path / "phantom.nii.gz"
    if "{image}" in argv:
        sitk.WriteImage(sphere_phantom(size=(16, 16, 16)), str(image))
    breaker(model, tmp_path)
    values = {"model": model, "tmp": tmp_path, "image": image, "out": tmp_path / "out"}
    before = _snapshot(tmp_path)
    capsys.readouterr()
    try:
        result = cli.main([a.format(**values) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        result = exc.code
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert result == code, captured.err
    assert len(lines) == 1 and lines[0].startswith("seguncertainty: error:"), captured.err
    assert message in lines[0], lines[0]
    assert "Traceback" not in captured.err and captured.out == ""
    after = _snapshot(tmp_path)
    if argv is SEGMENT and after.get("out") == "dir" and not any((tmp_path / "out").iterdir()):
        del after["out"]  # segment makes --out before loading the model (cli.segment.command, not model code): empty
    assert after == before  # nothing written, changed or removed (no model home, no output)
    assert len(CASES) >= 15
