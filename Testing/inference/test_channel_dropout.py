"""Channel (spatial) dropout: one sample is one mask draw over the whole volume, not a patchwork of windows;
elementwise dropout keeps its (seed, window, sample) masks."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.inference.scores import sample_overlaps, volume_scores
from SegUncertaintyLib.inference.sliding_window import WindowConfig, _WindowSampler, run_sliding_window
from SegUncertaintyLib.models.dropout import channel_seed, only_channel_dropout, sample_seed
from Testing.support.tiny_models import DropoutContextNet

CHANNELS, P, T = 8, 0.5, 20


class PointwiseChannelNet(nn.Module):
    """1x1x1 convolutions around a Dropout3d: a pass depends on the voxel and the channel mask only, so a
    windowed sample that used one mask everywhere equals the whole-volume pass with that mask."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.drop, self.b = nn.Conv3d(1, CHANNELS, 1), nn.Dropout3d(P), nn.Conv3d(CHANNELS, 2, 1)

    def forward(self, x):
        return self.b(self.drop(torch.tanh(self.a(x)))) * 3


def phantom(shape=(48, 48, 48)) -> np.ndarray:
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y) * np.sin(4 * z + 1)).astype(np.float32)


def every_mask_segmentation(net: PointwiseChannelNet, volume: np.ndarray) -> np.ndarray:
    """(2^C, *S) bool: the whole-volume foreground for each of the 2^C equally likely masks (p = 0.5)."""
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        hidden = torch.tanh(net.a(x))
        out = []
        for keep in itertools.product([0.0, 1.0], repeat=CHANNELS):
            mask = torch.tensor(keep).view(1, CHANNELS, 1, 1, 1) / (1 - P)
            out.append((net.b(hidden * mask).argmax(1)[0] == 1).numpy())
    return np.stack(out)


def sample_cv_interval(volumes: np.ndarray, t: int, rng: np.random.Generator, level=0.998) -> tuple[float, float]:
    """The central ``level`` interval of the CV of t draws from the exact (uniform) volume distribution."""
    draws = volumes[rng.integers(0, len(volumes), size=(20000, t))]
    cvs = draws.std(1, ddof=1) / draws.mean(1)
    return tuple(np.quantile(cvs, [(1 - level) / 2, (1 + level) / 2]))


@pytest.mark.parametrize("scripted", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "torchscript"])
def test_channel_dropout_sample_is_one_whole_volume_draw(scripted):
    """48^3 volume, 16^3 windows, T = 20: each sample equals the whole-volume pass of one of the 2^C masks,
    and the volume CV lies in the Monte Carlo interval of the exact whole-volume CV (per-window masks gave
    a patchwork with a CV about ten times smaller)."""
    volume = phantom()
    net = PointwiseChannelNet()
    exact = every_mask_segmentation(net, volume)
    model = torch.jit.script(net) if scripted else net
    result = run_sliding_window(volume, [model], plan_samples("mc_dropout", 1, T), 2,
                                WindowConfig((16, 16, 16), seed=1))
    samples = np.unpackbits(result.sample_bits[0].numpy(), axis=0, count=T, bitorder="little").astype(bool)

    e = exact.reshape(len(exact), -1).astype(np.float32)
    volumes = e.sum(1).astype(float)
    low, high = sample_cv_interval(volumes, T, np.random.default_rng(0))
    cv = volume_scores(sample_overlaps(result.sample_bits[0].numpy(), T), 1.0)["cv"]
    assert low <= cv <= high, (cv, low, high)
    assert low > 0.05  # the interval excludes the patchwork's CV

    s = samples.reshape(T, -1).astype(np.float32).T
    agreement = (e @ s + (1 - e) @ (1 - s)) / e.shape[1]  # (masks, samples) fraction of equal voxels
    assert agreement.max(0).min() > 0.9999, "a sample is no single mask's segmentation"


def test_channel_masks_ignore_the_window_and_the_batch():
    net = PointwiseChannelNet()
    volume = phantom((16, 16, 32))
    runs = [run_sliding_window(volume, [net], plan_samples("mc_dropout", 1, 6), 2,
                               WindowConfig((16, 16, 16), max_batch=b, seed=4)) for b in (1, 6)]
    assert torch.equal(runs[0].sample_bits, runs[1].sample_bits)
    assert len({channel_seed(4, t, j) for t in range(6) for j in range(3)}) == 18
    assert only_channel_dropout(net) and not only_channel_dropout(DropoutContextNet())


def rule_sums(net: nn.Module, window: torch.Tensor, index: int, seed: int, t: int) -> torch.Tensor:
    """Sum over samples of the softmax, the j-th nn.Dropout mask of a sample kept where the 32-bit words of
    numpy's Philox keyed (``sample_seed(seed, index, sample)``, j) are >= p * 2^32 (models/dropout.py)."""
    total = torch.zeros(3, *window.shape[2:])
    for sample in range(t):
        x, call = window, 0
        with torch.no_grad():
            for layer in net.body:
                if isinstance(layer, nn.Dropout):
                    size = x[0].numel()
                    u32 = np.random.Philox(key=[sample_seed(seed, index, sample), call]).random_raw(
                        (size + 1) // 2).view(np.uint32)[:size].astype(np.float64) / 2.0**32
                    keep = torch.from_numpy(u32 >= layer.p).view(x.shape[1:])
                    x = x * keep[None].float() / (1 - layer.p)
                    call += 1
                else:
                    x = layer(x)
            total += torch.softmax(x * 3, 1)[0]
    return total


def test_elementwise_dropout_keeps_its_window_and_sample_masks():
    net = DropoutContextNet(seed=2)
    window = torch.from_numpy(phantom((16, 16, 16)))[None, None]
    plan = plan_samples("mc_dropout", 1, 5)
    sampler = _WindowSampler([net], plan, WindowConfig((16, 16, 16), max_batch=3, seed=9), [])
    sum_p, *_ = sampler.run(window, 3, 3)
    expected = rule_sums(net, window, 3, 9, 5)
    assert torch.allclose(sum_p, expected, atol=1e-5)
    assert not torch.allclose(sum_p, rule_sums(net, window, 4, 9, 5), atol=1e-2)  # the window matters
