"""Inference backends of the bundled brainmask network (issue #23): per backend x precision, ms per window per
sample at batch 1 and 8, GFLOP/s and fraction of the CPU's peak, accuracy against torch fp32 eager on a real
window; the dropout-mask generator's cost per sample, before (MT19937) and after (Philox); and end to end
``segment_image`` on the bundled sample per method, torch fp32 against ``--backend auto``.

Run: .venv/bin/python Testing/benchmarks/bench_backends.py [--rounds 3]  (prints Markdown tables)

Timings are the median of ``--rounds`` rounds; within a round every candidate runs once in turn, so a change
in the machine's load (other processes share the CPU) falls on all of them alike. The load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import SimpleITK as sitk
import torch
from torch.utils.flop_counter import FlopCounterMode

from SegUncertaintyLib.cli.segment import SAMPLE_IMAGE as SAMPLE_PATH
from SegUncertaintyLib.core.options import SegmentOptions
from SegUncertaintyLib.inference.backends.choice import choose_backend, cpu_identity, make_runners
from SegUncertaintyLib.inference.preprocessing import to_model_space
from SegUncertaintyLib.inference.segment import segment_image
from SegUncertaintyLib.inference.sliding_window import pick_device
from SegUncertaintyLib.models.dropout import SampleMasks, dropout_layout, sample_seed, set_dropout
from SegUncertaintyLib.models.loader import load_model

CANDIDATES = [("torch", "fp32"), ("torch", "bf16"), ("onnxruntime", "fp32"), ("openvino", "fp32"),
              ("openvino", "bf16")]
METHODS = ("softmax", "mc_dropout", "ensemble", "tta")


def peak_gflops(flags: str) -> dict[str, float]:
    """Peak = cores x clock x FLOP per cycle per core. AMD Zen 5 (family 26; the flags show AVX-512 with
    avx512_vp2intersect and avx512_bf16) issues two 512-bit FMAs per cycle: 2 x 16 lanes x 2 FLOP = 64 fp32
    FLOP/cycle; VDPBF16PS does two bf16 products per fp32 lane: 128 bf16 FLOP/cycle. The clock is
    /proc/cpuinfo's 'cpu MHz' (a virtual machine's nominal clock; no turbo assumed)."""
    with open("/proc/cpuinfo") as info:
        mhz = float(next((line.split(":")[1] for line in info if line.startswith("cpu MHz")), "0"))
    cores = len(os.sched_getaffinity(0))
    per_cycle = 64 if "avx512f" in flags.split() else 32
    return {"fp32": cores * mhz / 1000 * per_cycle, "bf16": cores * mhz / 1000 * per_cycle * 2,
            "cores": cores, "ghz": mhz / 1000}


def real_window(model) -> torch.Tensor:
    """The (1, 1, 64, 64, 64) window at the centre of the bundled sample on the model grid."""
    array, _ = to_model_space(sitk.ReadImage(str(SAMPLE_PATH)), model.card)
    window = tuple(reversed(model.card.patch_size))
    padded = np.pad(array, [(0, max(0, w - s)) for s, w in zip(array.shape, window, strict=True)], mode="edge")
    starts = [(s - w) // 2 for s, w in zip(padded.shape, window, strict=True)]
    crop = padded[tuple(slice(a, a + w) for a, w in zip(starts, window, strict=True))]
    return torch.from_numpy(np.ascontiguousarray(crop, np.float32))[None, None]


def old_mt19937_masks(layout, seed: int, window: int, samples) -> list[torch.Tensor]:
    """The elementwise masks as drawn before (one torch MT19937 generator per sample, torch.rand per call)."""
    generators = [torch.Generator().manual_seed(sample_seed(seed, window, t)) for t in samples]
    return [torch.stack([torch.rand(c.shape, generator=g) for g in generators]) >= c.p for c in layout]


def bench_windows(model, rounds: int) -> None:
    net = model.networks[0]
    x1 = real_window(model)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x1)
    flops = counter.get_total_flops()
    flags = cpu_identity()["flags"]
    peak = peak_gflops(flags)
    print(f"\nnetwork: brainmask-t1 member 0 (MONAI UNet 16-32-64-128, 1 residual unit), one 64^3 window: "
          f"{flops / 1e9:.2f} GFLOP (torch.utils.flop_counter: convolutions, 2 FLOP per multiply-add)")
    print(f"peak: {peak['cores']} cores x {peak['ghz']:.2f} GHz x 64 fp32 FLOP/cycle = {peak['fp32']:.0f} GFLOP/s "
          f"fp32, {peak['bf16']:.0f} GFLOP/s bf16 (see peak_gflops)")
    choices = {c: choose_backend(model, SegmentOptions(backend=c[0], precision=c[1]), torch.device("cpu"))
               for c in CANDIDATES}
    runners = {c: make_runners(model, choice)[0] for c, choice in choices.items()}
    times = {(c, b): [] for c in CANDIDATES for b in (1, 8)}
    set_dropout(net, False)
    with torch.no_grad():
        for b in (1, 8):
            x = x1.repeat(b, 1, 1, 1, 1)
            for c in CANDIDATES:
                runners[c](x, None)  # warm-up (OpenVINO compiles per batch size)
            for _ in range(rounds):
                for c in CANDIDATES:
                    start = time.perf_counter()
                    runners[c](x, None)
                    times[(c, b)].append((time.perf_counter() - start) / b)
        reference = torch.softmax(runners[("torch", "fp32")](x1, None), 1)
        set_dropout(net, True)
        masked_reference = torch.softmax(runners[("torch", "fp32")](x1, SampleMasks(0, 0, [0])), 1)
        print("\n| backend | precision | ms/window/sample, batch 1 | batch 8 | GFLOP/s (batch 8) | of peak | "
              "max abs dp | p99 abs dp | labels changed | max abs dp, dropout masks |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in CANDIDATES:
            set_dropout(net, False)
            p = torch.softmax(runners[c](x1, None), 1)
            set_dropout(net, True)
            pm = torch.softmax(runners[c](x1, SampleMasks(0, 0, [0])), 1)
            dp = (p - reference).abs()
            changed = int((p.argmax(1) != reference.argmax(1)).sum())
            ms1, ms8 = (1000 * statistics.median(times[(c, b)]) for b in (1, 8))
            gflops = flops / 1e9 / (ms8 / 1000)
            print(f"| {c[0]} | {c[1]} | {ms1:.1f} | {ms8:.1f} | {gflops:.0f} | {gflops / peak[c[1]]:.1%} | "
                  f"{float(dp.max()):.2g} | {float(dp.flatten().quantile(0.99)):.2g} | {changed} | "
                  f"{float((pm - masked_reference).abs().max()):.2g} |")
    set_dropout(net, False)
    layout = dropout_layout(net, tuple(x1.shape[2:]))
    n = sum(int(np.prod(c.mask_shape)) for c in layout)
    old, new = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        old_mt19937_masks(layout, 0, 3, range(8))
        old.append((time.perf_counter() - start) / 8)
        start = time.perf_counter()
        masks = SampleMasks(0, 3, range(8))
        for c in layout:
            masks.keep(c)
        new.append((time.perf_counter() - start) / 8)
    print(f"\ndropout masks of one sample ({len(layout)} elementwise calls, {n / 1e6:.2f} M values), batch 8: "
          f"MT19937 per sample (before) {1000 * statistics.median(old):.1f} ms, Philox4x32-10 counter-based "
          f"(after) {1000 * statistics.median(new):.1f} ms")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def bench_end_to_end(model, rounds: int) -> None:
    image = sitk.ReadImage(str(SAMPLE_PATH))
    auto = choose_backend(model, SegmentOptions(backend="auto"), pick_device("cpu"))  # the probe, cached
    print(f"\nauto chose {auto.backend} {auto.precision} (max abs dp {auto.max_abs_dp:.2g}); its probe (ms, batch 1): "
          + ", ".join(f"{k} {v.get('ms', 'error')} ({v.get('max_abs_dp', 0):.2g})" for k, v in auto.probe.items()))
    print("\n| method | torch fp32 (s) | auto (s) | speed-up | p99 abs d entropy | max abs d p | Dice |"
          "\n|---|---|---|---|---|---|---|")
    for method in METHODS:
        times = {"torch": [], "auto": []}
        outputs = {}
        for _ in range(rounds):
            for backend in times:
                start = time.perf_counter()
                outputs[backend] = segment_image(image, model, SegmentOptions(method=method, backend=backend,
                                                                              device="cpu"))
                times[backend].append(time.perf_counter() - start)
        ref, got = outputs["torch"], outputs["auto"]
        entropy = [sitk.GetArrayFromImage(o.maps["entropy"]) for o in (ref, got)]
        prob = [sitk.GetArrayFromImage(o.probabilities["brain"]) for o in (ref, got)]
        labels = [sitk.GetArrayFromImage(o.segmentation) == 1 for o in (ref, got)]
        t_ref, t_auto = statistics.median(times["torch"]), statistics.median(times["auto"])
        print(f"| {method} | {t_ref:.2f} | {t_auto:.2f} | {t_ref / t_auto:.2f}x | "
              f"{np.quantile(np.abs(entropy[0] - entropy[1]), 0.99):.2g} | {np.abs(prob[0] - prob[1]).max():.2g} | "
              f"{dice(*labels):.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("SEGUNCERTAINTY_HOME", tempfile.mkdtemp(prefix="bench_backends_"))
    cpu = cpu_identity()
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx512_fp16", "amx_bf16", "amx_tile")
    print(f"CPU: {cpu['model']}, {len(os.sched_getaffinity(0))} cores, torch threads {torch.get_num_threads()}; "
          f"vector/matrix extensions: {', '.join(f for f in wanted if f in cpu['flags'].split())}; "
          f"load average before: {os.getloadavg()[0]:.2f}")
    model = load_model("brainmask-t1")
    bench_windows(model, args.rounds)
    bench_end_to_end(model, args.rounds)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
