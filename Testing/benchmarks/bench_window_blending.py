"""How window blending changes MI and variance: windowed maps against one pass over the whole
volume, on a volume that fits in one window, for three ways of blending the overlapping windows.

- moments: blend E[p], E[p^2], E[H] with the Gaussian weight, derive the maps after stitching (before the fix)
- maps:    derive MI and variance per window from that window's own T samples, blend the maps (the engine now)
- argmax:  MI and variance of the window whose weight is highest at the voxel (as for the sample labels)

MC dropout draws new masks in every window (seeded per window and sample), so the windows' sample means
differ at a voxel; blending moments adds that between-window spread to the variance and, by concavity of the
entropy, to the MI. Prints mean MI and mean variance over the volume, relative to the whole-volume pass.
Run: .venv/bin/python Testing/benchmarks/bench_window_blending.py
"""

from __future__ import annotations

import platform
import sys
from pathlib import Path

import numpy as np
import torch
from monai.data.utils import compute_importance_map

from SegUncertaintyLib.core.methods import plan_samples
from SegUncertaintyLib.inference.maps import uncertainty_maps
from SegUncertaintyLib.inference.sliding_window import WindowConfig, _WindowSampler, run_sliding_window, scan_slices

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for Testing.support
from Testing.support.tiny_models import DropoutContextNet  # noqa: E402


def volume(shape=(32, 32, 32), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (0.5 + 0.4 * np.sin(6 * x) * np.cos(5 * y) * np.sin(4 * z + 1)
            + 0.02 * rng.standard_normal(shape)).astype(np.float32)


def blended(vol, net, t, window, overlap, seed) -> dict[str, dict[str, float]]:
    """Mean MI and variance under each blending, from the same window samples."""
    plan = plan_samples("mc_dropout", 1, t)
    sampler = _WindowSampler([net], plan, WindowConfig(window, overlap, seed=seed), [])
    weight = compute_importance_map(window, mode="gaussian", sigma_scale=0.125, device="cpu").float()
    shape, c = vol.shape, 3
    acc = {k: torch.zeros((c, *shape)) for k in ("p", "p2")} | {k: torch.zeros(shape) for k in
                                                               ("h", "w", "mi", "var", "best", "mi_a", "var_a")}
    image = torch.from_numpy(vol)[None, None]
    for i, sl in enumerate(scan_slices(shape, window, overlap)):
        s_p, s_p2, s_h, _, _ = sampler.run(image[(slice(None), slice(None), *sl)], i, c)
        m = uncertainty_maps(s_p / t, s_p2 / t, s_h / t, t)
        acc["p"][(slice(None), *sl)] += weight * s_p / t
        acc["p2"][(slice(None), *sl)] += weight * s_p2 / t
        acc["h"][sl] += weight * s_h / t
        acc["w"][sl] += weight
        acc["mi"][sl] += weight * m["mutual_information"]
        acc["var"][sl] += weight * m["variance"]
        wins = weight > acc["best"][sl]
        acc["best"][sl] = torch.maximum(acc["best"][sl], weight)
        acc["mi_a"][sl] = torch.where(wins, m["mutual_information"], acc["mi_a"][sl])
        acc["var_a"][sl] = torch.where(wins, m["variance"], acc["var_a"][sl])
    w = acc["w"]
    moments = uncertainty_maps(acc["p"] / w, acc["p2"] / w, acc["h"] / w, t)
    return {"moments": {"mi": moments["mutual_information"].mean().item(), "var": moments["variance"].mean().item()},
            "maps": {"mi": (acc["mi"] / w).mean().item(), "var": (acc["var"] / w).mean().item()},
            "argmax": {"mi": acc["mi_a"].mean().item(), "var": acc["var_a"].mean().item()}}


def main(t: int = 10, seeds=range(4)) -> None:
    vol, net = volume(), DropoutContextNet()
    rows: dict[str, list[tuple[float, float]]] = {"moments": [], "maps": [], "argmax": [], "engine": []}
    for seed in seeds:
        plan = plan_samples("mc_dropout", 1, t)
        whole = run_sliding_window(vol, [net], plan, 3, WindowConfig((32, 32, 32), seed=seed))
        ref = (whole.maps["mutual_information"].mean().item(), whole.maps["variance"].mean().item())
        for name, v in blended(vol, net, t, (16, 16, 16), 0.5, seed).items():
            rows[name].append((v["mi"] / ref[0] - 1, v["var"] / ref[1] - 1))
        engine = run_sliding_window(vol, [net], plan, 3, WindowConfig((16, 16, 16), seed=seed))
        rows["engine"].append((engine.maps["mutual_information"].mean().item() / ref[0] - 1,
                               engine.maps["variance"].mean().item() / ref[1] - 1))
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} threads, CPU only; volume 32^3 (one 32^3 "
          f"window) vs 16^3 windows, overlap 0.5; MC dropout T={t}; {len(seeds)} seeds")
    print("| blending | mean MI vs whole volume | mean variance vs whole volume |")
    print("|---|---|---|")
    for name, values in rows.items():
        mi, var = np.array(values).T
        print(f"| {name} | {100 * mi.mean():+.1f} % (range {100 * mi.min():+.1f} to {100 * mi.max():+.1f}) | "
              f"{100 * var.mean():+.1f} % (range {100 * var.min():+.1f} to {100 * var.max():+.1f}) |")


if __name__ == "__main__":
    main()
