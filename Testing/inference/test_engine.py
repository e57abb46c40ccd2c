"""The streaming engine against MONAI's sliding_window_inference, analytic cases and failure modes."""

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data.utils import compute_importance_map, dense_patch_slices
from monai.inferers import sliding_window_inference
from torch import nn

from SegUncertaintyLib.core.errors import CancelledError, ResourceError, UsageError
from SegUncertaintyLib.core.methods import SampleSpec, plan_samples
from SegUncertaintyLib.inference.maps import class_argmax, first_max_index
from SegUncertaintyLib.inference.sliding_window import WindowConfig, run_sliding_window, scan_slices, window_weight
from SegUncertaintyLib.models.dropout import set_dropout
from Testing.support.tiny_models import DropoutContextNet, ThresholdNet


def smooth_volume(shape=(30, 41, 37), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y) * np.sin(4 * z + 1)
            + 0.02 * rng.standard_normal(shape)).astype(np.float32)


class ContextNet(nn.Module):
    """A deterministic network with spatial context (3x3x3 convolutions), so windows disagree at borders."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.Tanh(), nn.Conv3d(4, 3, 3, padding=1))

    def forward(self, x):
        return self.body(x) * 3


def monai_mean_probability(volume, net, window, overlap):
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        out = sliding_window_inference(x, window, 1, lambda v: torch.softmax(net(v), 1), overlap=overlap,
                                       mode="gaussian", sigma_scale=0.125, padding_mode="constant")
    return out[0]


def test_deterministic_mean_probability_matches_monai_sliding_window():
    volume = smooth_volume()
    net = ContextNet().eval()
    config = WindowConfig(window=(16, 16, 16), overlap=0.5)
    result = run_sliding_window(volume, [net], plan_samples("softmax", 1), 3, config)
    expected = monai_mean_probability(volume, net, (16, 16, 16), 0.5)
    assert result.mean_p.shape == (3, *volume.shape)
    assert torch.allclose(result.mean_p, expected, atol=1e-5)
    assert torch.allclose(result.mean_p.sum(0), torch.ones(volume.shape), atol=1e-5)


@pytest.mark.slow
def test_ensemble_mean_is_mean_of_members():
    volume = smooth_volume()
    nets = [ContextNet(seed=s).eval() for s in range(3)]
    config = WindowConfig(window=(16, 16, 16), overlap=0.5)
    result = run_sliding_window(volume, nets, plan_samples("ensemble", 3), 3, config)
    expected = torch.stack([monai_mean_probability(volume, n, (16, 16, 16), 0.5) for n in nets]).mean(0)
    assert torch.allclose(result.mean_p, expected, atol=1e-5)


def test_volume_smaller_than_window_is_padded_with_its_minimum_at_the_end():
    volume = smooth_volume(shape=(12, 16, 9))  # one window; z and x padded to 16
    net = ContextNet().eval()
    result = run_sliding_window(volume, [net], plan_samples("softmax", 1), 3, WindowConfig(window=(16, 16, 16)))
    padded = torch.nn.functional.pad(torch.from_numpy(volume)[None, None], (0, 7, 0, 0, 0, 4),
                                     value=float(volume.min()))
    with torch.no_grad():
        expected = torch.softmax(net(padded), 1)[0, :, :12, :16, :9]
    assert result.mean_p.shape == (3, 12, 16, 9)
    assert torch.allclose(result.mean_p, expected, atol=1e-6)


def test_overlap_zones_keep_their_variance_no_seams():
    """Pointwise MC dropout: the true per-voxel variance is the same everywhere on a constant input.

    Blending linear statistics keeps it; blending per-sample probabilities (the naive way) averages
    independent dropout draws where windows overlap and shrinks the variance there.
    """
    volume = np.full((16, 16, 40), 0.5, np.float32)
    net = ThresholdNet(gain=4.0, p=0.5)
    window, overlap, t = (16, 16, 16), 0.5, 200
    plan = plan_samples("mc_dropout", 1, t)
    result = run_sliding_window(volume, [net], plan, 2, WindowConfig(window, overlap, seed=1))
    variance = result.maps["variance"][8].mean(0).numpy()  # along x, where windows overlap

    starts = sorted({s[2].start for s in scan_slices(volume.shape, window, overlap)})
    coverage = np.zeros(volume.shape[2])
    for s in starts:
        coverage[s:s + window[2]] += 1
    single, double = variance[coverage == 1].mean(), variance[coverage == 2].mean()
    assert double == pytest.approx(single, rel=0.1)

    torch.manual_seed(1)
    set_dropout(net, True)
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        naive = torch.stack([monai_mean_probability(volume, net, window, overlap)[1] for _ in range(40)])
    naive_var = naive.var(0, unbiased=True)[8].mean(0).numpy()
    assert naive_var[coverage == 2].mean() < 0.8 * naive_var[coverage == 1].mean()
    del x


def test_same_seed_same_output_and_other_seed_differs():
    volume = smooth_volume(shape=(20, 20, 20))
    net = ThresholdNet(p=0.3)
    plan = plan_samples("mc_dropout", 1, 6)
    a = run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), seed=7))
    b = run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), seed=7))
    c = run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), seed=8))
    assert torch.equal(a.mean_p, b.mean_p) and torch.equal(a.sample_bits, b.sample_bits)
    assert not torch.equal(a.mean_p, c.mean_p)


def test_batch_chunking_does_not_change_the_deterministic_result():
    volume = smooth_volume(shape=(20, 24, 20))
    nets = [ContextNet(seed=s).eval() for s in range(2)]
    plan = plan_samples("ensemble+tta", 2, 4)
    big = run_sliding_window(volume, nets, plan, 3, WindowConfig((16, 16, 16), max_batch=8))
    small = run_sliding_window(volume, nets, plan, 3, WindowConfig((16, 16, 16), max_batch=1))
    assert torch.allclose(big.mean_p, small.mean_p, atol=1e-5)
    assert torch.equal(big.sample_bits, small.sample_bits)


def test_tta_undoes_flips():
    """A network that is exactly flip-equivariant gives the same answer for every flip: no uncertainty."""
    volume = smooth_volume(shape=(16, 16, 16))
    net = ThresholdNet(p=0.0).eval()
    result = run_sliding_window(volume, [net], plan_samples("tta", 1, 8), 2, WindowConfig((16, 16, 16)))
    assert result.maps["variance"].max() < 1e-6  # float32 round-off of E[p^2] - E[p]^2
    reference = run_sliding_window(volume, [net], plan_samples("softmax", 1), 2, WindowConfig((16, 16, 16)))
    assert torch.allclose(result.mean_p, reference.mean_p, atol=1e-6)


def test_sample_bits_hold_each_samples_labels():
    """ThresholdNet with input dropout: a sample either drops voxel v (p = sigmoid(-g), label 0) or keeps it
    (p = sigmoid(2g(x/(1-q) - 0.5)), label 1 iff x/(1-q) > 0.5). So the mean probability tells how many
    samples kept v, and the bits must hold exactly that many ones where the kept label is 1, none elsewhere."""
    volume = smooth_volume(shape=(16, 16, 16))
    gain, q, t = 8.0, 0.4, 10
    result = run_sliding_window(volume, [ThresholdNet(gain=gain, p=q)], plan_samples("mc_dropout", 1, t), 2,
                        WindowConfig((16, 16, 16), seed=3))
    x = torch.from_numpy(volume).double()
    dropped, kept = torch.sigmoid(torch.tensor(-gain).double()), torch.sigmoid(2 * gain * (x / (1 - q) - 0.5))
    n_kept = t * (result.mean_p[1].double() - dropped) / (kept - dropped)
    ones = torch.from_numpy(np.unpackbits(result.sample_bits[0].numpy(), axis=0, count=t,
                                          bitorder="little").sum(0).astype(np.int64))
    usable = (kept - dropped).abs() > 0.2
    expected = torch.where(x / (1 - q) > 0.5, n_kept.round().long(), torch.zeros_like(ones))
    assert usable.sum() > 1000 and (n_kept[usable] - n_kept[usable].round()).abs().max() < 1e-3
    assert torch.equal(ones[usable], expected[usable])
    assert 0 < ones.float().mean() < t  # samples differ


@pytest.mark.parametrize("scripted", [False, True], ids=["eager", "torchscript"])
def test_results_do_not_depend_on_max_batch(scripted):
    """Each sample's dropout masks come from (seed, window, sample): batching cannot change the maps."""
    volume = smooth_volume(shape=(20, 24, 20))
    net = ThresholdNet(gain=6.0, p=0.3)
    net = torch.jit.script(net) if scripted else net
    plan = plan_samples("mc_dropout", 1, 9)
    runs = [run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), max_batch=b, seed=5))
            for b in (1, 3, 8)]
    for other in runs[1:]:
        assert torch.equal(runs[0].sample_bits, other.sample_bits)
        # the same masks; only the float32 rounding of batched kernels differs (oneDNN picks its
        # convolution algorithm by batch size on some CPUs): a few ulp, far below any map's meaning
        assert torch.allclose(runs[0].mean_p, other.mean_p, rtol=0, atol=1e-6)
        for name, value in runs[0].maps.items():
            assert torch.allclose(value, other.maps[name], rtol=0, atol=1e-6), name
    assert runs[0].maps["variance"].max() > 0.01  # really stochastic


def test_engine_leaves_the_global_random_generator_alone():
    net = ThresholdNet()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run_sliding_window(smooth_volume(shape=(16, 16, 16)), [net], plan_samples("mc_dropout", 1, 3), 2,
               WindowConfig((16, 16, 16)))
    assert torch.equal(torch.rand(3), expected)


def _torch_cpu_oom():
    return RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB")


def _onnxruntime_oom():  # ONNX Runtime's own exception class (an Exception, not a RuntimeError) and message
    from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

    return RuntimeException("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while "
                            "running Conv node. Name:'/conv/Conv' Status Message: Failed to allocate memory for "
                            "requested buffer of size 9663676416")


def _openvino_oom():
    return RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:223:\nstd::bad_alloc")


class FlakyMemoryNet(nn.Module):
    """Raises an out-of-memory error (``error()``) for batches larger than ``limit``."""

    def __init__(self, limit, error=_torch_cpu_oom):
        super().__init__()
        self.inner, self.limit, self.calls, self.error = ThresholdNet(p=0.0).eval(), limit, [], error

    def forward(self, x):
        self.calls.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise self.error()
        return self.inner(x)


@pytest.mark.parametrize("error", [_onnxruntime_oom, _openvino_oom, MemoryError])
def test_the_exported_runtimes_out_of_memory_also_halves_the_batch(error):
    """ONNX Runtime's allocation failure is not a RuntimeError: before, it ended the run as an unexpected error."""
    volume = smooth_volume(shape=(16, 16, 16))
    net = FlakyMemoryNet(limit=2, error=error)
    plan = [SampleSpec(0, flip) for flip in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]]
    result = run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), max_batch=8))
    assert net.calls[:3] == [8, 4, 2] and any("retrying with 2" in n for n in result.notes)
    plain = run_sliding_window(volume, [net.inner], plan, 2, WindowConfig((16, 16, 16), max_batch=8))
    assert torch.equal(result.mean_p, plain.mean_p)
    with pytest.raises(ValueError, match="not memory"):  # any other error still ends the run as it is
        run_sliding_window(volume, [FlakyMemoryNet(0, lambda: ValueError("not memory"))], plan, 2,
                           WindowConfig((16, 16, 16)))


def test_out_of_memory_halves_the_batch_then_gives_a_clear_error():
    volume = smooth_volume(shape=(16, 16, 16))
    net = FlakyMemoryNet(limit=2)
    plan = [SampleSpec(0, flip) for flip in [(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]]
    result = run_sliding_window(volume, [net], plan, 2, WindowConfig((16, 16, 16), max_batch=8))
    assert net.calls[:3] == [8, 4, 2] and max(net.calls[3:]) == 2
    assert any("retrying with 2" in n for n in result.notes)
    with pytest.raises(ResourceError, match="Out of memory"):
        run_sliding_window(volume, [FlakyMemoryNet(limit=0)], plan, 2, WindowConfig((16, 16, 16)))


class DropoutFlakyNet(nn.Module):
    """ThresholdNet with dropout that raises out-of-memory for batches larger than ``limit``."""

    def __init__(self, limit):
        super().__init__()
        self.inner, self.limit = ThresholdNet(p=0.3), limit

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


def test_out_of_memory_fallback_does_not_change_stochastic_results():
    volume = smooth_volume(shape=(16, 16, 24))
    plan = plan_samples("mc_dropout", 1, 8)
    flaky = DropoutFlakyNet(limit=2)
    fallback = run_sliding_window(volume, [flaky], plan, 2, WindowConfig((16, 16, 16), max_batch=8, seed=2))
    assert any("retrying with 2" in n for n in fallback.notes)
    plain = run_sliding_window(volume, [flaky.inner], plan, 2, WindowConfig((16, 16, 16), max_batch=8, seed=2))
    assert torch.equal(fallback.sample_bits, plain.sample_bits) and torch.equal(fallback.mean_p, plain.mean_p)


def test_cancel_is_honoured_inside_a_window_between_forward_passes():
    """A window of 12 samples in passes of 2: cancel after the 2nd pass stops before the 3rd."""
    net = FlakyMemoryNet(limit=99)
    calls = net.calls
    with pytest.raises(CancelledError):
        run_sliding_window(smooth_volume(shape=(16, 16, 16)), [net], [SampleSpec(0, f) for f in [()] * 12], 2,
                   WindowConfig((16, 16, 16), max_batch=2), cancelled=lambda: len(calls) >= 2)
    assert calls == [2, 2]


@pytest.mark.parametrize("overlap", [0.95, 1.0, -0.1, float("nan")])
def test_overlap_out_of_range_or_with_a_one_voxel_stride_is_a_usage_error(overlap):
    with pytest.raises(UsageError, match="overlap"):
        run_sliding_window(smooth_volume(shape=(16, 16, 16)), [ThresholdNet()], plan_samples("softmax", 1), 2,
                   WindowConfig((16, 16, 16), overlap=overlap))


def test_cancel_stops_before_the_next_window():
    volume = smooth_volume(shape=(16, 16, 40))
    calls = []
    with pytest.raises(CancelledError):
        run_sliding_window(volume, [ThresholdNet()], plan_samples("mc_dropout", 1, 2), 2, WindowConfig((16, 16, 16)),
                   progress=lambda *a: calls.append(a), cancelled=lambda: len(calls) >= 1)
    assert len(calls) == 1


def test_mc_dropout_keeps_batchnorm_in_eval_mode():
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2), nn.Dropout(0.3))
    assert set_dropout(net, True) == 1
    assert not net[1].training and net[2].training
    set_dropout(net, False)
    assert not any(m.training for m in net.modules())


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_class_argmax_matches_torch_including_ties(n_classes):
    p = torch.randint(0, 4, (3, n_classes, 6, 7, 8)).float()  # many ties: the first maximum must win
    assert torch.equal(class_argmax(p, 1), p.argmax(1).to(torch.uint8))
    assert torch.equal(class_argmax(p[0], 0), p[0].argmax(0).to(torch.uint8))


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_first_max_index_of_read_only_image_views_matches_argmax(n_classes):
    """The input grid's labels come from views of the resampled images, which numpy marks read-only."""
    p = np.random.default_rng(n_classes).integers(0, 4, (n_classes, 6, 7, 8)).astype(np.float32)
    images = [sitk.GetImageFromArray(plane) for plane in p]  # a view does not keep its image alive
    views = [sitk.GetArrayViewFromImage(image) for image in images]
    assert not views[0].flags.writeable
    labels = first_max_index(views)
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, p.argmax(0))


@pytest.mark.slow
def test_windowed_mi_and_variance_match_one_pass_over_the_whole_volume():
    """Issue 13: on a volume that fits in one window, 12^3 windows (overlap 0.5) give the same mean MI and
    variance as one 24^3 pass within 2 %. The dropout masks differ per window, so the maps are compared as
    volume means (each an average of the same T-sample estimator). Blending E[p^2] and E[H] across windows
    instead adds the windows' disagreement: about +8 % MI and +6 % variance (bench_window_blending.py)."""
    volume, net, t = smooth_volume((24, 24, 24)), DropoutContextNet(), 10
    plan = plan_samples("mc_dropout", 1, t)
    whole = run_sliding_window(volume, [net], plan, 3, WindowConfig((24, 24, 24), seed=3))
    windowed = run_sliding_window(volume, [net], plan, 3, WindowConfig((12, 12, 12), overlap=0.5, seed=3))
    assert len(scan_slices(volume.shape, (12, 12, 12), 0.5)) == 27  # really blended
    for name in ("mutual_information", "variance", "entropy"):
        ratio = windowed.maps[name].mean().item() / whole.maps[name].mean().item()
        assert abs(ratio - 1) <= 0.02, (name, ratio)
    maps = windowed.maps  # the decomposition holds at every voxel; entropy <= H(blended mean) (concavity)
    assert torch.allclose(maps["entropy"], maps["expected_entropy"] + maps["mutual_information"], atol=1e-5)
    of_mean = -(torch.special.xlogy(windowed.mean_p, windowed.mean_p)).sum(0) / np.log(3)
    assert (maps["entropy"] <= of_mean + 1e-5).all() and (of_mean - maps["entropy"]).mean() < 0.01


@pytest.mark.parametrize("window", [(16, 16, 16), (7, 12, 9), (1, 5, 64), (64, 64, 64)])
def test_window_weight_equals_monais_gaussian_importance_map(window):
    expected = compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device="cpu").float()
    assert torch.equal(window_weight(window), expected)


def test_scan_slices_equal_monais_dense_patch_slices():
    """The window positions are MONAI's (dense_patch_slices with the interval scan_slices derives), in order."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        window = tuple(int(w) for w in rng.integers(1, 20, 3))
        shape = tuple(int(w + rng.integers(0, 40)) for w in window)
        overlap = float(rng.choice([0.0, 0.25, 0.5, 0.75, 0.9, rng.uniform(0, 0.99)]))
        interval = [max(int(w * (1.0 - overlap)), 1) for w in window]
        interval = [i if s > w else w for i, s, w in zip(interval, shape, window, strict=True)]
        assert scan_slices(shape, window, overlap) == list(dense_patch_slices(shape, window, tuple(interval))), (
            shape, window, overlap)
