"""Train the bundled abdomen CT model (MC-dropout 3D U-Net ensemble) on the CT in TotalSegmentator's archive.

    python Testing/scripts/train_ct_abdomen.py --out SegUncertaintyLib/models/bundled/abdomen_ct_demo \
        --members 3 --iterations 250 --batch 1

The data step (ct_data.py) fetches TotalSegmentator's source archive with pip and fails with one message
when it cannot. Training data: example_ct_sm with TotalSegmentator's own labels (liver, spleen, kidneys,
stomach); the DICOM CT of the same archive is held out (never read here). Each member starts from another
seed and sees another stream of heavy augmentation (affine, intensity shift/scale, contrast, blur, noise,
anterior-posterior flips, the only flip declared in the card: a left-right flip would swap the organs'
sides). CPU, a few minutes a member.
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
from ct_data import ORGANS, WORK, DataError, prepare, training_ct  # noqa: E402
from training import train  # noqa: E402

from SegUncertaintyLib.inference.preprocessing import resample_like, to_model_space  # noqa: E402
from SegUncertaintyLib.models.card import write_card  # noqa: E402
from SegUncertaintyLib.models.loader import build_network  # noqa: E402

SPACING = (3.0, 3.0, 3.0)
PATCH = (64, 64, 32)  # x y z voxels of the model grid (the training CT is 122 x 101 x 30 at 3 mm)
HU_WINDOW = {"method": "window", "lower": -200.0, "upper": 300.0}
ARCH = {"type": "monai", "name": "UNet", "kwargs": {
    "spatial_dims": 3, "in_channels": 1, "out_channels": len(ORGANS) + 1, "channels": [16, 32, 64, 128],
    "strides": [2, 2, 2], "num_res_units": 1, "norm": "instance", "dropout": 0.1}}
AP_AXIS = 1  # RandFlipd spatial axis of a (z, y, x) RAS-grid array: y points anterior -> "AP"

# SNOMED CT codes (Slicer's general anatomy list) and display colours (Slicer's anatomy colours)
ANATOMY = ["SCT", "123037004", "Anatomical Structure"]
TERMINOLOGY = {
    "liver": {"type": ["SCT", "10200004", "Liver"], "color": [0.867, 0.51, 0.396]},
    "spleen": {"type": ["SCT", "78961009", "Spleen"], "color": [0.616, 0.424, 0.635]},
    "right kidney": {"type": ["SCT", "64033007", "Kidney"], "modifier": ["SCT", "24028007", "Right"],
                     "color": [0.725, 0.4, 0.325]},
    "left kidney": {"type": ["SCT", "64033007", "Kidney"], "modifier": ["SCT", "7771000", "Left"],
                    "color": [0.725, 0.4, 0.325]},
    "stomach": {"type": ["SCT", "69695003", "Stomach"], "color": [0.847, 0.518, 0.412]},
}


class _Card:  # what to_model_space reads from a card
    spacing_mm, orientation, intensity = SPACING, "RAS", HU_WINDOW


def prepare_subject(ct: sitk.Image, organs: sitk.Image) -> dict:
    image, grid = to_model_space(ct, _Card)
    label = sitk.GetArrayFromImage(resample_like(organs, grid, linear=False))
    return {"image": image[None], "label": label[None].astype(np.float32)}


def augmentation() -> T.Compose:
    keys = ["image", "label"]
    patch = tuple(reversed(PATCH))
    return T.Compose([
        T.SpatialPadd(keys, patch),
        T.RandAffined(keys, prob=0.9, rotate_range=(0.3, 0.1, 0.1), scale_range=(0.15, 0.15, 0.15),
                      shear_range=(0.05, 0.05, 0.05), translate_range=(2, 10, 10), mode=("bilinear", "nearest"),
                      padding_mode="zeros"),
        T.RandSpatialCropd(keys, patch, random_size=False),
        T.RandFlipd(keys, prob=0.5, spatial_axis=AP_AXIS),
        T.RandShiftIntensityd("image", offsets=0.1, prob=0.5),  # +-50 HU
        T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
        T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
        T.RandGaussianSmoothd("image", sigma_x=(0.2, 1.0), sigma_y=(0.2, 1.0), sigma_z=(0.2, 1.0), prob=0.2),
        T.RandGaussianNoised("image", std=0.04, prob=0.5),
    ])


def train_member(data: list[dict], seed: int, iterations: int, batch: int = 2,
                 start: Path | None = None) -> torch.nn.Module:
    """One member from ``seed``; ``start``: a member's weights to continue from (lower peak learning rate)."""
    torch.manual_seed(seed)
    aug = augmentation()
    aug.set_random_state(seed)
    net = build_network(ARCH)
    if start is not None:
        net.load_state_dict(torch.load(start, map_location="cpu", weights_only=True))
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=1.0, lambda_ce=1.0)
    return train(net, data, aug, loss_fn, seed, iterations, batch, max_lr=3e-3 if start is None else 1.5e-3,
                 log_every=25)


def card(members: list[dict], iterations: int, batch: int, seeds: list[int], continued: dict | None = None) -> dict:
    labels = {"0": "background", **{str(v): name for v, (name, _, _) in ORGANS.items()}}
    ids = ", ".join(f"{name} {ct}" for name, ct, _ in ORGANS.values())
    return {
        "name": "abdomen-ct-demo",
        "version": "1.0.0",
        "task": "abdominal organs: liver, spleen, right and left kidney, stomach",
        "modality": "CT (Hounsfield units), adult abdomen",
        "labels": labels,
        "preprocessing": {"spacing_mm": list(SPACING), "orientation": "RAS", "intensity": HU_WINDOW},
        "patch_size": list(PATCH),
        "methods": ["softmax", "mc_dropout", "ensemble", "tta"],
        "tta_flips": ["AP"],  # RandFlipd(spatial_axis=AP_AXIS): the only flip used in training
        "output": "logits",
        "architecture": ARCH,
        "members": members,
        "training_data": "One abdomen CT: example_ct_sm.nii.gz (122x101x30, 3 mm) from TotalSegmentator 2.18.0's "
                         "source archive on PyPI (tests/reference_files), labels example_seg.nii.gz = "
                         "TotalSegmentator's own output (model predictions, not manual tracings; TotalSegmentator "
                         f"ids {ids}). Held out: the archive's DICOM CT example_ct_dicom. Heavy augmentation "
                         "(affine, HU shift/scale, contrast, blur, noise, anterior-posterior flips).",
        "training": {"iterations": iterations, "batch": batch, "loss": "CE + soft Dice", "seeds": seeds,
                     "script": "Testing/scripts/train_ct_abdomen.py",
                     **({"continued_from": continued} if continued else {})},
        "intended_use": "Demonstration only, not for diagnosis: shows segmentation uncertainty on CT. Not a "
                        "medical device.",
        "limitations": "Trained on a single 30-slice abdomen CT with machine-made labels, 3 mm: coarse organs; "
                       "expect failures on other fields of view, contrast phases, anatomy variants, children.",
        "license": "Apache-2.0 (weights); training data: TotalSegmentator 2.18.0 test files (code Apache-2.0; "
                   "labels are TotalSegmentator's outputs)",
        "terminology": {v: {"category": ANATOMY, **TERMINOLOGY[name]} for v, name in labels.items() if v != "0"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=250)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=WORK)
    parser.add_argument("--continue-from", type=Path, help="a model folder whose members' weights to continue from")
    args = parser.parse_args()
    torch.set_num_threads(2)
    try:
        folder = prepare(args.cache)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    data = [prepare_subject(*training_ct(folder))]
    args.out.mkdir(parents=True, exist_ok=True)
    members, seeds = [], [2000 + m for m in range(args.members)]
    for m, seed in enumerate(seeds):
        start = None if args.continue_from is None else args.continue_from / f"member{m}.pt"
        net = train_member(data, seed=seed, iterations=args.iterations, batch=args.batch, start=start)
        filename = f"member{m}.pt"
        torch.save(net.state_dict(), args.out / filename)
        members.append({"file": filename, "sha256": ""})
    continued = None
    if args.continue_from is not None:  # what the starting members were trained with
        continued = json.loads((args.continue_from / "card.json").read_text())["training"]
    write_card(card(members, args.iterations, args.batch, seeds, continued), args.out)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
