"""Train the bundled brain-extraction model (MC-dropout 3D U-Net ensemble) on the offline T1 heads.

    python Testing/scripts/train_brainmask.py --out SegUncertaintyLib/models/bundled/brainmask_t1 \
        --members 3 --iterations 900

Each member starts from another seed and sees another stream of heavy augmentation (affine, elastic,
bias field, gamma, noise, blur/low resolution, flips). ``--subjects`` restricts the training set, for
the leave-one-out check of the card (train on one head, test on the other). CPU, about 5 min a member.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai import transforms as T
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).parent))
from brain_data import labelled_subjects  # noqa: E402
from training import train  # noqa: E402

from SegUncertaintyLib.inference.preprocessing import resample_like, to_model_space  # noqa: E402
from SegUncertaintyLib.models.card import write_card  # noqa: E402
from SegUncertaintyLib.models.loader import build_network  # noqa: E402

SPACING = (3.0, 3.0, 3.0)
PATCH = (64, 64, 64)
ARCH = {"type": "monai", "name": "UNet", "kwargs": {
    "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance", "dropout": 0.1}}
INTENSITY = {"method": "percentile", "lower": 0.5, "upper": 99.5}


class _Card:  # what to_model_space reads from a card
    spacing_mm, orientation, intensity = SPACING, "RAS", INTENSITY


def prepare(t1: sitk.Image, mask: sitk.Image) -> dict:
    image, grid = to_model_space(t1, _Card)
    label = sitk.GetArrayFromImage(resample_like(mask, grid, linear=True)) > 0.5
    return {"image": image[None], "label": label[None].astype(np.float32)}


def augmentation() -> T.Compose:
    keys = ["image", "label"]
    return T.Compose([
        T.SpatialPadd(keys, PATCH),
        T.RandAffined(keys, prob=0.9, rotate_range=(0.35, 0.35, 0.35), scale_range=(0.15, 0.15, 0.15),
                      shear_range=(0.05, 0.05, 0.05), translate_range=(8, 8, 8), mode=("bilinear", "nearest"),
                      padding_mode="zeros"),
        T.Rand3DElasticd(keys, sigma_range=(6, 9), magnitude_range=(40, 120), prob=0.25,
                         mode=("bilinear", "nearest"), padding_mode="zeros"),
        T.RandSpatialCropd(keys, PATCH, random_size=False),
        T.RandFlipd(keys, prob=0.5, spatial_axis=2),
        T.RandBiasFieldd("image", coeff_range=(0.0, 0.4), prob=0.5),
        T.RandAdjustContrastd("image", gamma=(0.5, 1.8), prob=0.5),
        T.RandSimulateLowResolutiond("image", zoom_range=(0.5, 1.0), prob=0.25),
        T.RandGaussianSmoothd("image", sigma_x=(0.2, 1.0), sigma_y=(0.2, 1.0), sigma_z=(0.2, 1.0), prob=0.2),
        T.RandScaleIntensityd("image", factors=0.2, prob=0.5),
        T.RandGaussianNoised("image", std=0.05, prob=0.5),
    ])


def train_member(data: list[dict], seed: int, iterations: int, batch: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    aug = augmentation()
    aug.set_random_state(seed)
    net = build_network(ARCH)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.3, lambda_ce=1.0)
    return train(net, data, aug, loss_fn, seed, iterations, batch, max_lr=3e-3, log_every=50)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=900)
    parser.add_argument("--subjects", nargs="+", default=["mni152", "colin27"])
    parser.add_argument("--name", default="brainmask-t1")
    args = parser.parse_args()
    torch.set_num_threads(2)

    subjects = labelled_subjects()
    data = [prepare(*subjects[s]) for s in args.subjects]
    args.out.mkdir(parents=True, exist_ok=True)
    members = []
    for m in range(args.members):
        net = train_member(data, seed=1000 + m, iterations=args.iterations)
        filename = f"member{m}.pt"
        torch.save(net.state_dict(), args.out / filename)
        members.append({"file": filename, "sha256": ""})
    card = {
        "name": args.name,
        "version": "1.0.0",
        "task": "brain extraction (skull stripping)",
        "modality": "MR T1-weighted, adult human head",
        "labels": {"0": "background", "1": "brain"},
        "preprocessing": {"spacing_mm": list(SPACING), "orientation": "RAS", "intensity": INTENSITY},
        "patch_size": list(PATCH),
        "methods": ["softmax", "mc_dropout", "ensemble", "tta"],
        "tta_flips": ["LR"],  # RandFlipd(spatial_axis=2): the x axis of the RAS grid, left-right only
        "output": "logits",
        "architecture": ARCH,
        "members": members,
        "training_data": f"{', '.join(args.subjects)} T1 heads with brain masks (MNI152 2009a template and mask "
                         "from nilearn; Colin27 ch2 with ch2bet > 0 from Debian mricron-data), heavy "
                         "augmentation (affine, elastic, bias field, gamma, low resolution, blur, noise, flips)",
        "training": {"iterations": args.iterations, "batch": 2, "loss": "CE + 0.3 soft Dice",
                     "seeds": [1000 + m for m in range(args.members)],
                     "script": "Testing/scripts/train_brainmask.py"},
        "intended_use": "Research and demonstration of segmentation uncertainty. Not a medical device; "
                        "not for clinical decisions.",
        "limitations": "Trained on two T1 heads only (an average template and one subject) at 3 mm: "
                       "coarse masks; expect failures on other contrasts, children, lesions, cropped FOV.",
        "license": "Apache-2.0 (weights); training data: see their own licenses",
    }
    write_card(card, args.out)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
