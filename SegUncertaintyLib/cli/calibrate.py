"""``seguncertainty calibrate``: labelled cases -> a calibration (referral threshold with a guarantee,
predicted Dice with intervals) that later runs of the same weights + method + samples apply."""

from __future__ import annotations

import logging
from pathlib import Path

from ..cohort.executors import EXECUTORS
from ..core.errors import InputImageError, UsageError
from ..core.options import DEVICES
from ..core.vocabulary import DEFAULT_METHOD, MAP_CHOICES, METHODS
from .common import CancelFlag, add_backend_options


def add_parser(sub) -> None:
    cal = sub.add_parser("calibrate", help="fit a referral threshold with a guarantee and a predicted Dice on "
                                           "labelled cases")
    cal.add_argument("model", help="model name, card path, nnU-Net v2 trained-model folder or MONAI bundle folder")
    cal.add_argument("--images", nargs="+", required=True, metavar="INPUT",
                     help="what cohort accepts: image files, folders (DICOM series included), CSV files")
    cal.add_argument("--labels", required=True,
                     help="folder of reference labelmaps named as the cases' inputs (case_0000.nii.gz pairs with "
                          "case.nii.gz)")
    cal.add_argument("--method", default=DEFAULT_METHOD, choices=METHODS,
                     help="uncertainty method (default: %(default)s)")
    cal.add_argument("--samples", type=int, default=None, help="samples per member (default: the method's)")
    cal.add_argument("--alpha", type=float, default=0.1,
                     help="target expected fraction of missed errors, and 1 - the Dice intervals' coverage "
                          "(default: %(default)s)")
    cal.add_argument("--map", default="entropy", choices=[m for m in MAP_CHOICES if m != "probability"],
                     help="uncertainty map the referral threshold applies to (default: %(default)s)")
    cal.add_argument("--failure-dice", type=float, default=0.8,
                     help="a case fails below this Dice, for the failure AUROC (default: %(default)s)")
    cal.add_argument("--temperature-voxels", type=int, default=20000, metavar="N",
                     help="temperature scaling: every pass's logits at up to N voxels per case of the dilated box "
                          "around reference and prediction, kept as float16 in the report folder's temperature/ "
                          "(the passes run again on each case); 0: no temperature (default: %(default)s)")
    cal.add_argument("--workers", type=int, default=1, help="cases run at the same time (default: %(default)s)")
    cal.add_argument("--executor", default="local", choices=EXECUTORS, help="(default: %(default)s)")
    cal.add_argument("--address", default=None, help="address of a running Ray or Dask cluster to join")
    cal.add_argument("--device", default="auto", choices=DEVICES, help="(default: %(default)s)")
    cal.add_argument("--seed", type=int, default=0, help="random seed of the dropout masks (default: %(default)s)")
    add_backend_options(cal)
    cal.add_argument("--progress", default="bar", choices=("bar", "json", "none"), help="(default: %(default)s)")
    cal.add_argument("--strict", action="store_true",
                     help="refuse (exit 2) calibration cases the model trained on (an nnU-Net model's "
                          "splits_final.json), instead of a warning")
    cal.add_argument("--out", default=None,
                     help="report folder; the cases' outputs go to its cases/ sub-folder, resumable "
                          "(default: ./seguncertainty_calibration/<model name>-<method>)")


def command(args) -> int:
    from ..calibration.store import write_calibration
    from ..cohort.run import run_cohort
    from ..core.options import SegmentOptions
    from ..evaluation.calibrate import calibration_document, pair_references, training_overlap, write_report
    from ..evaluation.calibration_fit import FEW_CASES, MIN_CASES
    from ..evaluation.case_folder import read_json

    if not 0.0 < args.alpha < 1.0:
        raise UsageError(f"calibrate: --alpha must lie in (0, 1), got {args.alpha}")
    if args.temperature_voxels < 0:
        raise UsageError(f"calibrate: --temperature-voxels must be >= 0, got {args.temperature_voxels}")
    labels = Path(args.labels)
    if not labels.is_dir():
        raise InputImageError(f"--labels {labels} is not a folder" if labels.exists()
                              else f"--labels {labels} not found")
    options = SegmentOptions(model=args.model, method=args.method, samples=args.samples, device=args.device,
                             seed=args.seed, maps=(args.map,), overview=False, calibration="none",
                             backend=args.backend, precision=args.precision).check()
    out = Path(args.out) if args.out else Path("seguncertainty_calibration") / (
        f"{Path(args.model).name}-{args.method}")
    cancel = CancelFlag()
    try:
        rows = run_cohort(args.images, out / "cases", options, args.workers, args.executor, args.address,
                          args.progress, cancel)
    finally:
        cancel.restore()
    pairs, notes = pair_references(rows, out / "cases", labels)
    failed = [row["case"] for row in rows if row["status"] == "failed"]
    if failed:
        notes.append(f"{len(failed)} case(s) failed (errors in {out / 'cases' / 'worklist.csv'}): "
                     f"{', '.join(failed[:5])}")
    for note in notes:
        logging.warning(note)
    if len(pairs) < MIN_CASES:
        raise UsageError(f"calibrate: needs at least {MIN_CASES} labelled cases, got {len(pairs)}")
    if len(pairs) < FEW_CASES:
        logging.warning(f"only {len(pairs)} labelled cases: the conformal corrections cost 1/(n+1) = "
                        f"{1 / (len(pairs) + 1):.3f} of alpha; {FEW_CASES} or more are advised")
    trained = training_overlap(pairs, read_json(pairs[0][0] / "manifest.json", "manifest")["model"].get("folder"))
    if trained and args.strict:
        raise UsageError(f"calibrate --strict: {trained}")
    if trained:
        logging.warning(trained)
    doc = calibration_document(pairs, args.alpha, args.map, args.failure_dice, args.samples, options,
                               out / "temperature", args.temperature_voxels)
    doc["notes"] += [trained] if trained else []
    path = write_calibration(doc, doc["model"]["folder"])
    report = write_report(doc, path, out)
    referral = doc["referral"]
    print(f"Wrote calibration {path} (n = {doc['n']}, alpha = {doc['alpha']}, {doc['map']} threshold "
          f"{referral['threshold']}) and {report}")
    return 0
