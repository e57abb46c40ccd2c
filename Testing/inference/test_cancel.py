"""A cancel takes effect between two layers of a forward pass, not after the whole (batched) pass."""

from __future__ import annotations

import pytest
import torch

from SegUncertaintyLib.core.errors import CancelledError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.segment import cancel_between_modules, segment_image
from SegUncertaintyLib.models.card import load_card
from SegUncertaintyLib.models.loader import LoadedModel
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import ThresholdNet, write_threshold_model


def test_a_cancel_set_inside_a_pass_stops_it_before_the_next_layer(tmp_path):
    networks = [ThresholdNet(), ThresholdNet(gain=6.0)]
    model = LoadedModel(load_card(write_threshold_model(tmp_path / "model")), networks)
    flag = {"set": False, "layers_after": 0}

    def press_ctrl_c(*_):  # the signal handler runs while the dropout layer of the first pass returns
        flag["set"] = True

    def count(*_):
        flag["layers_after"] += flag["set"]

    networks[0].dropout.register_forward_hook(press_ctrl_c)
    networks[0].conv.register_forward_pre_hook(count)  # registered after ours: runs only if ours let it
    image = sphere_phantom(size=(20, 18, 16), radius_mm=18.0)
    with pytest.raises(CancelledError):
        segment_image(image, model, SegmentOptions(model="x", method="mc_dropout", samples=4),
                      cancelled=lambda: flag["set"])
    assert flag["layers_after"] == 0  # the pass's next layer never ran
    with cancel_between_modules(lambda: True):
        pass
    assert networks[1](torch.zeros(1, 1, 2, 2, 2)).shape == (1, 2, 2, 2, 2)  # no hook left behind
