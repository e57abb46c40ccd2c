"""A cancel takes effect between two layers of a forward pass, not after the whole (batched) pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SegUncertaintyLib.core.errors import CancelledError
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.scores import sample_overlaps, subject_scores
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


def _polls_until(n: int):
    """A cancel flag that the user sets after it has been polled ``n`` times (during the phase under test)."""
    polls = []

    def cancelled() -> bool:
        polls.append(1)
        return len(polls) > n
    return cancelled, polls


def test_a_cancel_during_the_scores_is_honoured():
    t, shape = 6, (8, 9, 10)
    masks = np.random.default_rng(0).random((t, *shape)) > 0.5
    bits = torch.from_numpy(np.packbits(masks, axis=0, bitorder="little"))[None]
    mean_p = torch.stack([torch.full(shape, 0.4), torch.full(shape, 0.6)])
    prediction = torch.ones(shape, dtype=torch.int64)
    args = (bits, mean_p, torch.full(shape, 0.2), prediction, 1.0, t, {0: "bg", 1: "lesion"})
    cancelled, polls = _polls_until(1)
    with pytest.raises(CancelledError):
        subject_scores(*args, cancelled=cancelled)
    assert len(polls) == 2
    with pytest.raises(CancelledError):  # inside the pair counts' chunk loop
        sample_overlaps(bits[0].numpy(), t, chunk=100, cancelled=_polls_until(3)[0])
    assert subject_scores(*args)["lesion"]["volume_ml"] > 0  # without a cancel: scores as before


def test_a_cancel_after_the_passes_stops_before_the_images_are_placed(tmp_path):
    """Cancelled while the scores or the resampling to the input grid run: CancelledError, not outputs."""
    model = LoadedModel(load_card(write_threshold_model(tmp_path / "model")), [ThresholdNet(), ThresholdNet()])
    image = sphere_phantom(size=(20, 18, 16), radius_mm=18.0)
    options = SegmentOptions(model="x", method="mc_dropout", samples=2)
    messages = []

    def report(stage, fraction, message):
        messages.append(message)

    with pytest.raises(CancelledError):  # set once the scores start: every earlier poll has passed
        segment_image(image, model, options, report, cancelled=lambda: "subject-level scores" in messages)
    assert segment_image(image, model, options).scores["classes"]["sphere"]["volume_ml"] > 0


def test_the_program_ends_at_once_after_a_cancel_and_exits_normally_otherwise(monkeypatch):
    from SegUncertaintyLib import cli

    ended = []

    def ending(how):
        def end(code):
            ended.append((how, code))
            raise SystemExit(code)
        return end

    monkeypatch.setattr(cli.os, "_exit", ending("os._exit"))  # the interpreter's teardown skipped
    monkeypatch.setattr(cli.sys, "exit", ending("sys.exit"))
    monkeypatch.setattr(cli.sys, "argv", ["seguncertainty", "cohort"])
    for code in (130, 0, 3):
        monkeypatch.setattr(cli, "main", lambda argv=None, process_entry=False, code=code: code)
        with pytest.raises(SystemExit):
            cli.run()
    assert ended == [("os._exit", 130), ("sys.exit", 0), ("sys.exit", 3)]
    monkeypatch.setattr(cli.sys, "argv", ["seguncertainty", "segment"])  # outputs published: no teardown
    with pytest.raises(SystemExit):
        cli.run()
    assert ended[-1] == ("os._exit", 3)
