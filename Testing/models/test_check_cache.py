"""The load-time checks' cache: a pass is remembered per verified weights, a change of weights checks again,
and a refusal is never remembered."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from SegUncertaintyLib.core.errors import ModelError
from SegUncertaintyLib.models import loader
from SegUncertaintyLib.models.card import write_card
from SegUncertaintyLib.models.loader import CHECKS_CACHE, check_mc_dropout, load_model
from Testing.support.tiny_models import write_threshold_model


class _Refuses(Exception):
    pass


def _refuse(*_args, **_kwargs):
    raise _Refuses()


def test_a_passed_output_check_is_remembered_per_weights(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(home))
    folder = write_threshold_model(tmp_path / "model", members=2)
    load_model(folder)
    assert len(list((home / CHECKS_CACHE).iterdir())) == 1
    monkeypatch.setattr(loader, "check_outputs", _refuse)
    load_model(folder)  # remembered: the probe does not run
    other = write_threshold_model(tmp_path / "other", members=2, gains=(3.0, 4.0, 5.0))  # other weights
    with pytest.raises(_Refuses):
        load_model(other)


def _unet_model(folder, dropout: float):
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [4, 8], "strides": [2],
              "dropout": dropout}
    folder.mkdir()
    torch.save(UNet(**kwargs).state_dict(), folder / "net.pt")
    write_card({"name": "unet", "labels": {"0": "bg", "1": "fg"},
                "preprocessing": {"spacing_mm": [2, 2, 2], "intensity": {"method": "none"}},
                "patch_size": [16, 16, 16], "methods": ["softmax", "mc_dropout"],
                "architecture": {"type": "monai", "name": "UNet", "kwargs": kwargs},
                "members": [{"file": "net.pt", "sha256": "0" * 64}]}, folder)
    return folder


def test_mc_dropout_pass_is_remembered_and_a_refusal_is_not(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "home"))
    model = load_model(_unet_model(tmp_path / "model", 0.2))
    calls = []
    model.networks[0].register_forward_hook(lambda *_: calls.append(1))
    check_mc_dropout(model, [0])
    assert len(calls) == 2  # two dropout-on passes
    check_mc_dropout(model, [0])
    assert len(calls) == 2  # remembered: no probe pass

    inactive = load_model(_unet_model(tmp_path / "inactive", 0.0))  # dropout layers with p = 0
    for _ in range(2):  # refused each time: nothing was remembered
        with pytest.raises(ModelError, match="dropout is inactive"):
            check_mc_dropout(inactive, [0])


def test_models_check_runs_every_check_and_remembers_nothing(tmp_path, monkeypatch):
    from SegUncertaintyLib.models.manage import check_path

    home = tmp_path / "home"
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(home))
    folder = _unet_model(tmp_path / "model", 0.2)
    load_model(folder)  # a segment run remembers the output check
    monkeypatch.setattr(loader, "check_outputs", _refuse)
    with pytest.raises(_Refuses):
        check_path(folder)  # the explicit check still runs it
    monkeypatch.undo()
    monkeypatch.setenv("SEGUNCERTAINTY_HOME", str(tmp_path / "other_home"))
    check_path(folder)
    assert not (tmp_path / "other_home").exists()
