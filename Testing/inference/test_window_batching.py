"""Windows share forward passes when each window has one sample per pass (softmax, ensemble, TTA): the same
results as one window at a time, to float rounding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.inference.sliding_window import WindowConfig, _WindowSampler, run_sliding_window
from Testing.support.phantoms import sphere_phantom
from Testing.support.tiny_models import DropoutContextNet


@pytest.mark.parametrize("method, members, batched", [("softmax", 1, 8), ("ensemble", 3, 8), ("tta", 1, 2),
                                                      ("mc_dropout", 1, 1)])
def test_windows_per_pass(method, members, batched):
    nets = [DropoutContextNet(seed=m) for m in range(members)]
    plan = plan_samples(method, members, 4 if method == "tta" else None)
    assert _WindowSampler(nets, plan, WindowConfig((16, 16, 16), max_batch=8), []).windows_per_pass() == batched


@pytest.mark.parametrize("method, samples", [("softmax", None), ("ensemble", None), ("tta", 4)])
def test_batched_windows_give_the_same_results(method, samples):
    import SimpleITK as sitk

    volume = sitk.GetArrayFromImage(sphere_phantom(size=(40, 36, 32), noise=0.05)).astype(np.float32)
    nets = [DropoutContextNet(seed=m).eval() for m in range(2)]
    plan = plan_samples(method, 2, samples)
    one, many = (run_sliding_window(volume, nets, plan, 3, WindowConfig((16, 16, 16), 0.5, max_batch=b))
                 for b in (len(plan) if method == "tta" else 1, 8))
    assert torch.allclose(one.mean_p, many.mean_p, atol=1e-5)
    for name in one.maps:
        assert torch.allclose(one.maps[name], many.maps[name], atol=1e-5)
    disagree = (one.sample_bits != many.sample_bits).float().mean()
    assert disagree < 1e-4  # label flips only at float ties


def test_softmax_runs_eight_windows_per_forward_pass():
    from SegUncertaintyLib.inference.sliding_window import scan_slices

    volume = np.zeros((40, 36, 32), np.float32)
    net = DropoutContextNet().eval()
    batches = []
    net.register_forward_hook(lambda _m, args, _out: batches.append(args[0].shape[0]))
    run_sliding_window(volume, [net], plan_samples("softmax", 1), 3, WindowConfig((16, 16, 16), 0.5, max_batch=8))
    n = len(scan_slices((40, 36, 32), (16, 16, 16), 0.5))
    assert sum(batches) == n and len(batches) == -(-n // 8) and max(batches) == 8
