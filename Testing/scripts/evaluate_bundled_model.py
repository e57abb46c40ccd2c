"""Evaluate the bundled brain-extraction model for its card: held-out Dice and out-of-distribution scores.

    python Testing/scripts/evaluate_bundled_model.py [--loo-dir Testing/scripts/_work]

1. Leave-one-out: models trained by train_brainmask.py on one head only (``--subjects mni152`` or
   ``colin27``, in ``--loo-dir``/loo_<subject>) segment the other head; Dice against its mask.
2. The bundled model on in-distribution heads and out-of-distribution inputs (macaque brain, EPI,
   a head stored upside down): subject-level scores. Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from brain_data import colin27, epi, macaque, mni152  # noqa: E402

from SegUncertaintyLib.core.options import SegmentOptions  # noqa: E402
from SegUncertaintyLib.inference.scores import SUBJECT_SCORES  # noqa: E402
from SegUncertaintyLib.inference.segment import segment_image  # noqa: E402
from SegUncertaintyLib.models.loader import DEFAULT_MODEL, load_model  # noqa: E402

METHOD, SAMPLES = "ensemble+mc_dropout", 10
SCORES = ("segmentation_volume_ml", *SUBJECT_SCORES)


def dice(seg: sitk.Image, ref: sitk.Image) -> float:
    a = sitk.GetArrayFromImage(seg) > 0
    b = sitk.GetArrayFromImage(ref) > 0.5
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def upside_down(image: sitk.Image) -> sitk.Image:
    """The same voxels with the superior-inferior axis reversed and the header unchanged."""
    flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::-1].copy())
    flipped.CopyInformation(image)
    return flipped


def row(name: str, outputs, extra: str = "") -> str:
    s = outputs.scores["classes"]["brain"]
    mean_mi = float(sitk.GetArrayFromImage(outputs.maps["mutual_information"]).mean())
    cells = [f"{s[k]:.1f}" if k == "segmentation_volume_ml" else f"{s[k]:.4f}" for k in SCORES]
    return f"| {name} | {extra} | " + " | ".join(cells) + f" | {mean_mi:.5f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loo-dir", type=Path, default=Path(__file__).parent / "_work")
    args = parser.parse_args()
    heads = {"mni152": mni152(), "colin27": colin27()}
    header = ("| input | Dice | " + " | ".join(SCORES) + " | mean MI (volume) |\n"
              "|---|---|" + "---|" * (len(SCORES) + 1))

    print(f"Leave-one-out ({METHOD}, {SAMPLES} samples per member):\n\n" + header)
    for train, test in (("mni152", "colin27"), ("colin27", "mni152")):
        folder = args.loo_dir / f"loo_{train}"
        if not folder.exists():
            print(f"| {test} | (no model in {folder}) |")
            continue
        image, mask = heads[test]
        out = segment_image(image, load_model(folder), SegmentOptions(method=METHOD, samples=SAMPLES))
        print(row(f"{test} (trained on {train} only)", out, f"{dice(out.segmentation, mask):.3f}"))

    bundled = load_model(DEFAULT_MODEL)
    print(f"\nBundled model {bundled.card.name} ({METHOD}, {SAMPLES} samples per member):\n\n" + header)
    for name, (image, mask) in heads.items():
        out = segment_image(image, bundled, SegmentOptions(method=METHOD, samples=SAMPLES))
        print(row(f"{name} (in training set)", out, f"{dice(out.segmentation, mask):.3f}"))
    for name, image in (("macaque INIA19 T1 brain (OOD)", macaque()), ("EPI, nibabel example4d (OOD)", epi()),
                        ("colin27 stored upside down (OOD)", upside_down(heads["colin27"][0]))):
        out = segment_image(image, bundled, SegmentOptions(method=METHOD, samples=SAMPLES))
        print(row(name, out, "n/a"))
    print("\nsegmentation_volume_ml on the input grid; ulabelled, segment_entropy in nats; "
          "cv, ulabelled, segment_entropy, diversity: higher = more uncertain; "
          "dpw: lower = more uncertain. np", np.__version__)


if __name__ == "__main__":
    main()
