"""Benchmark: the streaming engine against the naive way, wall time and peak memory, one table.

    python Testing/benchmarks/bench_engine.py                       # 256x256x128, T = 5, 20, 50
    python Testing/benchmarks/bench_engine.py --shape 300 512 512 --samples 20 --net tiny --only engine

Naive way: T separate ``monai.inferers.sliding_window_inference`` passes with dropout on, every
sample's probability volume stacked (T, C, Z, Y, X), then reduced to mean, entropy, MI and variance.
Engine: ``run_sliding_window`` (T samples per window in batches, streamed statistics, bit-packed labels).
Both use the same network, window (64^3), overlap, Gaussian blending and batch of 8 forward passes.
Each measurement runs in a fresh process; peak memory is that process's peak resident set size.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time

import numpy as np
import torch
from child_run import run_child

WINDOW = (64, 64, 64)


def network(kind: str) -> torch.nn.Module:
    if kind == "unet":  # the bundled model's architecture and weights
        from SegUncertaintyLib.models.loader import DEFAULT_MODEL, load_model

        return load_model(DEFAULT_MODEL).networks[0]
    return torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Conv3d(1, 2, 3, padding=1))


def naive(volume: np.ndarray, net: torch.nn.Module, t: int, overlap: float, batch: int) -> dict:
    from monai.inferers import sliding_window_inference

    from SegUncertaintyLib.inference.maps import class_argmax, uncertainty_maps
    from SegUncertaintyLib.models.dropout import set_dropout

    set_dropout(net, True)
    x = torch.from_numpy(volume)[None, None]
    with torch.no_grad():
        probs = torch.stack([
            sliding_window_inference(x, WINDOW, batch, lambda v: torch.softmax(net(v), 1), overlap=overlap,
                                     mode="gaussian", sigma_scale=0.125)[0]
            for _ in range(t)])  # (T, C, Z, Y, X)
        entropy_each = -(probs * torch.log(probs.clamp_min(1e-12))).sum(1) / np.log(probs.shape[1])
        maps = uncertainty_maps(probs.mean(0), (probs * probs).mean(0), entropy_each.mean(0), t)
        labels = class_argmax(probs, 1)  # per-sample segmentations (the engine's fast argmax, to be fair)
    return {"mean_entropy": float(maps["entropy"].mean()), "labels_bytes": labels.numel()}


def engine(volume: np.ndarray, net: torch.nn.Module, t: int, overlap: float, batch: int) -> dict:
    from SegUncertaintyLib.core.methods import plan_samples
    from SegUncertaintyLib.inference.sliding_window import WindowConfig, run_sliding_window

    result = run_sliding_window(volume, [net], plan_samples("mc_dropout", 1, t), 2,
                        WindowConfig(window=WINDOW, overlap=overlap, max_batch=batch))
    return {"mean_entropy": float(result.maps["entropy"].mean()), "labels_bytes": result.sample_bits.numel()}


def child(args) -> None:
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    volume = rng.random(args.shape, dtype=np.float32)
    torch.manual_seed(0)  # the same tiny network in every process
    net = network(args.net)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    out = {"naive": naive, "engine": engine}[args.child](volume, net, args.samples[0], args.overlap, args.batch)
    out["wall_s"] = time.perf_counter() - start
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["before_mib"] = baseline / 1024
    print(json.dumps(out))


def measure(args, way: str, t: int) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--samples", str(t), "--shape", *map(str, args.shape),
           "--overlap", str(args.overlap), "--net", args.net, "--batch", str(args.batch),
           "--threads", str(args.threads)]
    return run_child(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 256, 256], help="z y x voxels")
    parser.add_argument("--samples", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--net", choices=("unet", "tiny"), default="unet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--only", choices=("engine", "naive"), default=None)
    parser.add_argument("--child", choices=("engine", "naive"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, CPU; "
          f"volume {args.shape} (z,y,x), window {WINDOW}, overlap {args.overlap}, net {args.net}, "
          f"batch {args.batch}\n")
    print("| T | naive wall s | engine wall s | wall ratio naive/engine | naive peak MiB | engine peak MiB "
          "| peak ratio engine/naive | mean entropy naive / engine |")
    print("|---|---|---|---|---|---|---|---|")
    for t in args.samples:
        ways = [args.only] if args.only else ["naive", "engine"]
        r = {w: measure(args, w, t) for w in ways}
        n, e = r.get("naive", {}), r.get("engine", {})

        def cell(d, key, fmt="{:.1f}"):
            return fmt.format(d[key]) if key in d else d.get("error", "-")

        wall = f"{n['wall_s'] / e['wall_s']:.2f}" if "wall_s" in n and "wall_s" in e else "-"
        peak = f"{e['peak_mib'] / n['peak_mib']:.2f}" if "peak_mib" in n and "peak_mib" in e else "-"
        ent = f"{cell(n, 'mean_entropy', '{:.4f}')} / {cell(e, 'mean_entropy', '{:.4f}')}"
        print(f"| {t} | {cell(n, 'wall_s')} | {cell(e, 'wall_s')} | {wall} | {cell(n, 'peak_mib', '{:.0f}')} "
              f"| {cell(e, 'peak_mib', '{:.0f}')} | {peak} | {ent} |", flush=True)


if __name__ == "__main__":
    main()
