"""A small nnU-Net v2 model that is actually trained (benchmark tooling, not library code): lesion phantoms,
nnunetv2's own preprocessing, a plain torch training loop on CPU, nnunet_tiny's folder and checkpoint format.

The task is synthetic: a CT-like body (soft tissue in air, a bright spine-like cylinder as a distractor) with
one ellipsoidal lesion brighter than the tissue; the label is the lesion. Each fold trains on its own half of
the training phantoms with its own seed, so the folds are a 2-member ensemble. Training augments with random
flips on all three axes, so the checkpoint's mirroring axes (0, 1, 2) make test-time flips in distribution.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from Testing.support.nnunet_tiny import build_network, make_nnunet_model, tiny_plans

SPACING_MM = 1.5  # the plans' isotropic spacing
PATCH = (32, 32, 32)
FEATURES = (4, 8, 16, 32)
LABELS = {"background": 0, "lesion": 1}


def lesion_phantom(seed: int, fov_mm=(70.0, 70.0, 60.0), spacing_xyz=(1.5, 1.5, 1.5), contrast_hu: float = 200.0,
                   noise_hu: float = 25.0) -> tuple[sitk.Image, sitk.Image]:
    """(image float32 HU, label uint8) over ``fov_mm`` (x, y, z) at ``spacing_xyz`` mm: an elliptic body of
    40 HU in -1000 HU air, a 700 HU cylinder along z (distractor, not labelled), and an ellipsoidal lesion of
    40 + ``contrast_hu`` HU with semi-axes 5-11 mm at a random place inside the body (label 1); Gaussian noise
    of ``noise_hu``. ``seed`` draws the lesion and the noise."""
    rng = np.random.default_rng(seed)
    size = [max(8, round(f / s)) for f, s in zip(fov_mm, spacing_xyz, strict=True)]
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(size, spacing_xyz, strict=True)]  # mm from centre
    z, y, x = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    half = [f / 2 for f in fov_mm]
    body = (x / (0.9 * half[0])) ** 2 + (y / (0.8 * half[1])) ** 2 < 1
    spine = (x ** 2 + (y - 0.5 * half[1]) ** 2 < 5.0 ** 2) & body
    semi = rng.uniform(5.0, 11.0, 3)
    centre = [rng.uniform(-0.45, 0.45) * half[0], rng.uniform(-0.5, 0.15) * half[1],
              rng.uniform(-0.5, 0.5) * (half[2] - semi[2])]
    lesion = (((x - centre[0]) / semi[0]) ** 2 + ((y - centre[1]) / semi[1]) ** 2
              + ((z - centre[2]) / semi[2]) ** 2 < 1) & body & ~spine
    array = np.where(body, 40.0, -1000.0) + 660.0 * spine + contrast_hu * lesion
    array = array + rng.normal(0.0, noise_hu, array.shape)
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing(spacing_xyz)
    label = sitk.GetImageFromArray(lesion.astype(np.uint8))
    label.CopyInformation(image)
    return image, label


def random_phantom(seed: int) -> tuple[sitk.Image, sitk.Image]:
    """A lesion phantom with a random field of view (60-84 mm), spacing (1.2-2.0 mm in plane, 1.5-2.5 mm
    between slices), lesion contrast (60-300 HU) and noise (15-40 HU), all drawn from ``seed``."""
    rng = np.random.default_rng(10_000 + seed)
    fov = tuple(float(v) for v in rng.uniform(60.0, 84.0, 3))
    inplane = float(rng.uniform(1.2, 2.0))
    spacing = (inplane, inplane, float(rng.uniform(1.5, 2.5)))
    return lesion_phantom(seed, fov, spacing, float(rng.uniform(60.0, 300.0)), float(rng.uniform(15.0, 40.0)))


def _intensity_properties(images: list[sitk.Image], labels: list[sitk.Image]) -> dict:
    """nnU-Net's foreground intensity statistics (the voxels inside the labels), as its fingerprint has them."""
    values = np.concatenate([sitk.GetArrayViewFromImage(i)[sitk.GetArrayViewFromImage(lab) > 0]
                             for i, lab in zip(images, labels, strict=True)]).astype(np.float64)
    return {"max": float(values.max()), "mean": float(values.mean()), "median": float(np.median(values)),
            "min": float(values.min()), "percentile_00_5": float(np.percentile(values, 0.5)),
            "percentile_99_5": float(np.percentile(values, 99.5)), "std": float(values.std())}


def _preprocess(image: sitk.Image, label: sitk.Image, plans: dict, dataset_json: dict) -> tuple[np.ndarray, ...]:
    """nnunetv2's DefaultPreprocessor on one case: (1, z, y, x) float32 data and int64 labels at the plans'
    spacing, padded to at least the patch size (data 0, label 0)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans)
    data = sitk.GetArrayFromImage(image).astype(np.float32)[None]
    seg = sitk.GetArrayFromImage(label).astype(np.int16)[None]
    data, seg, _ = DefaultPreprocessor(verbose=False).run_case_npy(
        data, seg, {"spacing": list(image.GetSpacing())[::-1]}, manager, manager.get_configuration("3d_fullres"),
        dataset_json)
    pad = [(0, 0)] + [(0, max(0, p - n)) for p, n in zip(PATCH, data.shape[1:], strict=True)]
    return np.pad(data, pad), np.pad(seg.astype(np.int64), pad)


def _batch(cases, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` random patches (half of them centred on a lesion voxel), flipped at random on each axis,
    with a random intensity scale (0.75-1.25), shift (SD 0.2) and Gaussian noise (SD 0-0.5) in nnU-Net's
    normalized units: (B, 1, *PATCH) and (B, *PATCH)."""
    xs, ys = [], []
    for k in range(size):
        data, seg = cases[rng.integers(len(cases))]
        shape = np.array(data.shape[1:])
        hi = shape - PATCH
        if k % 2 == 0 and (seg > 0).any():
            centre = np.argwhere(seg[0] > 0)[rng.integers(int((seg > 0).sum()))]
            start = np.clip(centre - np.array(PATCH) // 2, 0, hi)
        else:
            start = np.array([rng.integers(h + 1) for h in hi])
        box = tuple(slice(s, s + p) for s, p in zip(start, PATCH, strict=True))
        x, y = data[(slice(None), *box)], seg[0][box]
        for axis in range(3):
            if rng.random() < 0.5:
                x, y = np.flip(x, axis + 1), np.flip(y, axis)
        x = x * rng.uniform(0.75, 1.25) + rng.normal(0.0, 0.2) + rng.normal(0.0, rng.uniform(0.0, 0.5), x.shape)
        xs.append(np.ascontiguousarray(x, dtype=np.float32))
        ys.append(np.ascontiguousarray(y))
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


def train_fold(cases, plans: dict, seed: int, steps: int = 300, batch: int = 2,
               lr: float = 3e-3) -> tuple[dict, float]:
    """Train the PlainConvUNet that ``build_network`` makes from ``plans`` on ``cases`` ((data, seg) pairs):
    Adam, cross-entropy + soft Dice of the lesion, ``steps`` steps, torch seed ``seed``. Returns the state
    dict and the mean loss of the last 20 steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(plans, "3d_fullres", 1, len(LABELS)).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x, y = _batch(cases, rng, batch)
        logits = net(x)
        p = torch.softmax(logits, 1)[:, 1]
        target = (y == 1).float()
        dice = (2 * (p * target).sum() + 1.0) / (p.sum() + target.sum() + 1.0)
        loss = torch.nn.functional.cross_entropy(logits, y) + 1.0 - dice
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # polynomial decay, as nnU-Net's schedule
            group["lr"] = lr * (1 - (step + 1) / steps) ** 0.9
        losses.append(float(loss.detach()))
    return {k: v.detach().clone() for k, v in net.eval().state_dict().items()}, float(np.mean(losses[-20:]))


def train_nnunet_tiny(root: Path, n_train: int = 24, steps: int = 1000, log=print) -> Path:
    """A trained 2-fold nnU-Net v2 folder under ``root`` (Dataset999_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres),
    made once: ``n_train`` phantoms (seeds 0..n_train-1, names train_000...), fold f trains on half f with seed
    f; splits_final.json names the halves. nnunet_tiny writes the folder and checkpoints (nnunetv2's format;
    mirroring axes (0, 1, 2)); the trained weights replace its initialization."""
    existing = next(Path(root).glob("Dataset999_Tiny/*__*/fold_1/checkpoint_final.pth"), None)
    if existing is not None:
        return existing.parents[1]
    pairs = [random_phantom(seed) for seed in range(n_train)]
    plans = tiny_plans(spacing=(SPACING_MM,) * 3, patch_size=PATCH, features=FEATURES)
    plans["foreground_intensity_properties_per_channel"] = {"0": _intensity_properties(*zip(*pairs, strict=True))}
    dataset_json = {"channel_names": {"0": "CT"}, "labels": LABELS, "numTraining": n_train, "file_ending": ".nii.gz"}
    cases = [_preprocess(image, label, plans, dataset_json) for image, label in pairs]
    names = [f"train_{i:03d}" for i in range(n_train)]
    halves = [list(range(0, n_train // 2)), list(range(n_train // 2, n_train))]
    weights = []
    for fold, half in enumerate(halves):
        start = time.perf_counter()
        state, loss = train_fold([cases[i] for i in half], plans, seed=fold, steps=steps)
        log(f"nnunet-tiny fold {fold}: {steps} steps on {len(half)} phantoms in {time.perf_counter() - start:.0f} s, "
            f"final loss {loss:.3f}")
        weights.append(state)
    folder, _ = make_nnunet_model(root, folds=2, plans=plans, dataset_json=dataset_json)
    for fold, state in enumerate(weights):
        path = folder / f"fold_{fold}" / "checkpoint_final.pth"
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["network_weights"] = state
        torch.save(checkpoint, path)
    splits = [{"train": [names[i] for i in half], "val": [names[i] for i in other]}
              for half, other in (halves, halves[::-1])]
    (folder / "splits_final.json").write_text(json.dumps(splits, indent=1))
    return folder
