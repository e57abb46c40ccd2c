"""Evaluate the bundled abdomen-ct-demo model for its card: held-out Dice from DICOM, scores, OOD behaviour.

    python Testing/scripts/evaluate_ct_model.py [--samples 5]

1. Held out: TotalSegmentator's DICOM CT, through the command line exactly as a user runs it
   (``seguncertainty segment <dicom folder> --model abdomen-ct-demo``); per-organ Dice against
   TotalSegmentator's labels on the DICOM grid; each organ's scores with their readings.
2. In distribution, for score_reference: the training CT (example_ct_sm) and the same scan's longer version
   (example_ct, 112 slices, its lower part unlabelled); the proposed bounds = worst value with a 50 % margin.
3. Out of distribution: T1 heads (the bundled Colin27 sample, MNI152 from nilearn), the abdominal MR of the
   same archive (Dice too), and the head CT inside Debian's invesalius-examples (Cranium.inv3).
Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import plistlib
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).parent))
from ct_data import ORGANS, WORK, abdominal_mr, heldout_ct, prepare, training_ct  # noqa: E402

from SegUncertaintyLib.core.options import SegmentOptions  # noqa: E402
from SegUncertaintyLib.inference.scores import score_range  # noqa: E402
from SegUncertaintyLib.inference.segment import segment_image  # noqa: E402
from SegUncertaintyLib.models.loader import load_model  # noqa: E402

MODEL, METHOD = "abdomen-ct-demo", "ensemble+mc_dropout"
SCORES = ("cv", "dpw", "ulabelled", "segment_entropy", "diversity")
REPO = Path(__file__).resolve().parents[2]
SAMPLE_T1 = REPO / "SegUncertaintyLib" / "sample" / "colin27_t1_2mm.nii.gz"
INVESALIUS = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


def dice(seg: np.ndarray, ref: np.ndarray, value: int) -> float | None:
    a, b = seg == value, ref == value
    return None if not b.any() else float(2 * (a & b).sum() / (a.sum() + b.sum()))


def invesalius_head_ct() -> sitk.Image | None:
    """The head CT (int16 HU, 0.957 x 0.957 x 1.5 mm) of Debian's invesalius-examples Cranium.inv3."""
    if not INVESALIUS.exists():
        return None
    with tarfile.open(INVESALIUS) as tar, tempfile.TemporaryDirectory() as tmp:
        members = [m for m in tar.getmembers() if m.isfile() and Path(m.name).name in ("main.plist", "matrix.dat")]
        tar.extractall(tmp, members=members, filter="data")
        folder = Path(tmp) / Path(members[0].name).parent
        info = plistlib.loads((folder / "main.plist").read_bytes())["matrix"]
        spacing = plistlib.loads((folder / "main.plist").read_bytes())["spacing"]
        array = np.fromfile(folder / "matrix.dat", dtype=info["dtype"]).reshape(info["shape"])
    image = sitk.GetImageFromArray(array.astype(np.float32))
    image.SetSpacing([float(s) for s in spacing])
    return image


def score_rows(name: str, scores: dict, readings: dict | None, dices: dict | None = None) -> list[str]:
    rows = []
    for organ in (row[0] for row in ORGANS.values()):
        s = scores.get(organ, {})
        cells = ["n/a" if s.get(k) is None else f"{s[k]:.3f}" for k in SCORES]
        flagged = [k for k, r in (readings or {}).get(organ, {}).items() if r["reading"] == "review recommended"]
        d = (dices or {}).get(organ)
        rows.append(f"| {name} | {organ} | {'n/a' if d is None else f'{d:.3f}'} | {s.get('volume_ml', 0):.1f} | "
                    + " | ".join(cells) + f" | {', '.join(flagged) or '-'} |")
    return rows


def segment_and_print(model, name: str, image: sitk.Image, labels: sitk.Image | None, samples: int):
    """Segment ``image``, print its table rows (Dice per organ where ``labels`` are given); the outputs."""
    out = segment_image(image, model, SegmentOptions(method=METHOD, samples=samples))
    d = None
    if labels is not None:
        s, r = sitk.GetArrayFromImage(out.segmentation), sitk.GetArrayFromImage(labels)
        d = {n: dice(s, r, v) for v, (n, _, _) in ORGANS.items()}
    print("\n".join(score_rows(name, out.scores["classes"], out.scores.get("readings"), d)))
    return out


HEADER = ("| input | organ | Dice | volume mL | " + " | ".join(SCORES) + " | review recommended on |\n"
          "|---|---|---|---|" + "---|" * (len(SCORES) + 1))


UNRELIABLE_CV = 0.5  # in-distribution cv above this: the samples disagree on the organ's very volume


def propose_bounds(worst: dict, n_classes: int) -> dict:
    """{organ: {score: bound}}: dpw below 1 - 1.5 (1 - worst), the others above 1.5 worst; a bound outside the
    score's own range (scores.score_range: ulabelled up to ln C, segment_entropy up to ln 2) is dropped: it could
    never fire. An organ whose worst in-distribution cv exceeds UNRELIABLE_CV gets no bounds at all: the model
    is already unreliable on its training scan, a bound 1.5 times that (cv above 0.75) would hardly ever fire,
    and "within the usual range" would reassure falsely; its scores then carry no reading."""
    proposal = {}
    for organ, values in worst.items():
        if values.get("cv") is not None and values["cv"] > UNRELIABLE_CV:
            continue
        bounds = {}
        for score, value in values.items():
            low, high = score_range(score, n_classes)
            if score == "dpw":
                limit = round(1 - 1.5 * (1 - value), 3)
                if limit > low:
                    bounds[score] = {"review_below": limit}
            else:
                limit = round(1.5 * value, 3)
                if limit < high:
                    bounds[score] = {"review_above": limit}
        if bounds:
            proposal[organ] = bounds
    return proposal


def run_cli(dicom: Path, model: str, samples: int, out: Path) -> dict:
    """``seguncertainty segment <dicom> --model abdomen-ct-demo`` as a user runs it; returns scores.json."""
    command = [sys.executable, "-m", "SegUncertaintyLib.cli", "segment", str(dicom), "--model", model,
               "--method", METHOD, "--samples", str(samples), "--out", str(out), "--progress", "none",
               "--no-overview"]
    subprocess.run(command, check=True, cwd=REPO)
    return json.loads((out / "scores.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=WORK)
    parser.add_argument("--model", default=MODEL, help="model name or folder")
    parser.add_argument("--samples", type=int, default=5, help="MC dropout samples per member")
    args = parser.parse_args()
    folder = prepare(args.cache)
    model = load_model(args.model)
    print(f"Method {METHOD}, {args.samples} samples per member ({args.samples * len(model.card.members)} in all)\n")

    dicom, ct, labels = heldout_ct(folder)
    with tempfile.TemporaryDirectory() as tmp:
        doc = run_cli(dicom, args.model, args.samples, Path(tmp) / "out")
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / "out" / "segmentation.nrrd")))
    ref = sitk.GetArrayFromImage(labels)
    dices = {name: dice(seg, ref, v) for v, (name, _, _) in ORGANS.items()}
    ref_ml = {name: float((ref == v).sum() * np.prod(ct.GetSpacing()) / 1000) for v, (name, _, _) in ORGANS.items()}
    print("Held-out DICOM CT (command line):\n\n" + HEADER)
    print("\n".join(score_rows("DICOM CT (held out)", doc["classes"], doc["readings"], dices)))
    print("\nreference volumes mL:", {k: round(v, 1) for k, v in ref_ml.items()})

    print("\nIn distribution (score_reference samples):\n\n" + HEADER)
    train_image, train_labels = training_ct(folder)
    longer = sitk.ReadImage(str(folder / "example_ct.nii.gz"), sitk.sitkFloat32)
    worst: dict = {}
    for name, image, lab in (("example_ct_sm (training)", train_image, train_labels),
                             ("example_ct (training scan, 112 slices)", longer, None)):
        out = segment_and_print(model, name, image, lab, args.samples)
        for organ, values in out.scores["classes"].items():
            for k in SCORES:
                if values.get(k) is not None:
                    best = worst.setdefault(organ, {}).get(k)
                    pick = min if k == "dpw" else max
                    worst[organ][k] = values[k] if best is None else pick(best, values[k])
    print("\nProposed score_reference classes (worst in-distribution value, 50 % margin on the uncertain side; "
          "a bound outside the score's own range, which could never fire, is left out, and so is an organ with "
          f"in-distribution cv above {UNRELIABLE_CV}; method and n_samples as measured):\n"
          + json.dumps({"method": METHOD, "n_samples": args.samples * len(model.card.members),
                       "classes": propose_bounds(worst, len(model.card.labels))}))

    print("\nOut of distribution:\n\n" + HEADER)
    from brain_data import _from_nibabel
    from nilearn import datasets

    mr, mr_labels = abdominal_mr(folder)
    ood = [("abdominal MR", mr, mr_labels), ("Colin27 T1 (bundled sample)", sitk.ReadImage(str(SAMPLE_T1),
            sitk.sitkFloat32), None), ("MNI152 T1 (nilearn)", _from_nibabel(datasets.load_mni152_template(2)), None)]
    head_ct = invesalius_head_ct()
    if head_ct is not None:
        ood.append(("head CT (invesalius-examples)", head_ct, None))
    for name, image, lab in ood:
        segment_and_print(model, name, image, lab, args.samples)


if __name__ == "__main__":
    main()
