"""Benchmark: an nnU-Net v2 model, nnunetv2's own predictor against SegUncertainty, wall time and peak memory.

    python Testing/benchmarks/bench_nnunet.py                          # 96x192x192, 2 folds
    python Testing/benchmarks/bench_nnunet.py --shape 300 512 512 --folds 5
    python Testing/benchmarks/bench_nnunet.py --shape 300 512 512 --workdir /tmp/b --ways nnunet  # one way,
        # keeping the model and image in /tmp/b for the other way's run

Same model folder (made here: PlainConvUNet from nnunetv2's builder, patch 64^3, 4 stages, random
weights), same CT-like input at the plans' spacing, same passes: every fold, no mirroring.
nnU-Net: ``nnUNetPredictor.predict_single_npy_array(..., save_or_return_probabilities=True)`` (fold
logits averaged, then softmax: segmentation + probabilities, what ``--save_probabilities`` gives).
SegUncertainty, two ways: ``segment_image(..., SegmentOptions(method="ensemble"))`` in memory (each fold's
softmax kept as a sample; mean, entropy, MI, variance, expected entropy, per-sample label bits and every subject score,
returned as float32 images), and the command line ``seguncertainty segment IMAGE --model FOLDER --method
ensemble`` (the same, with its scratch folder, every output written: segmentation, 2 probabilities, 4
maps as float32 NRRD, scores.json, overview.png, manifest; the image read inside the command).
Each measurement runs in a fresh process that reads the image from a file written by the parent (so
making the image does not set the peak); peak = that process's peak resident set size, which includes
the imports (about 0.5 GB) and the input image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
from child_run import run_child

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository, for Testing.support

PATCH, FEATURES = (64, 64, 64), (8, 16, 32, 64)
WAYS = {"nnunet": "nnunetv2 predictor", "ours": "SegUncertainty ensemble, in memory",
        "segment": "SegUncertainty `segment` command, outputs written"}


def make_model(root: Path, folds: int, features=FEATURES) -> Path:
    from Testing.support.nnunet_tiny import make_nnunet_model, tiny_plans

    folder, _ = make_nnunet_model(root, folds=folds, plans=tiny_plans(patch_size=PATCH, features=features))
    return folder


def prepare_inputs(work: Path, folds: int, shape: tuple[int, int, int], features) -> tuple[Path, Path]:
    """The model folder and the CT-like image file (uncompressed NRRD) under ``work``, made once."""
    import SimpleITK as sitk

    from Testing.support.nnunet_tiny import ct_like_image

    work.mkdir(parents=True, exist_ok=True)
    model = work / f"folds{folds}_features{'-'.join(map(str, features))}"
    folder = next(model.glob("*/*__*"), None) if model.is_dir() else None
    if folder is None:
        folder = make_model(model, folds, features)
    image = work / f"ct_{'x'.join(map(str, shape))}.nrrd"
    if not image.is_file():
        sitk.WriteImage(ct_like_image(shape), str(image))
    return folder, image


def nnunet(folder: Path, image) -> dict:
    import SimpleITK as sitk
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    folds = sorted(int(p.name[5:]) for p in folder.glob("fold_*"))
    predictor.initialize_from_trained_model_folder(str(folder), folds, "checkpoint_final.pth")
    array = sitk.GetArrayFromImage(image)[None]
    _, probabilities = predictor.predict_single_npy_array(array, {"spacing": list(image.GetSpacing())[::-1]},
                                                          None, None, True)
    return {"mean_p1": float(probabilities[1].mean())}


def ours(folder: Path, image) -> dict:
    import SimpleITK as sitk

    from SegUncertaintyLib.core.options import SegmentOptions
    from SegUncertaintyLib.inference.segment import segment_image
    from SegUncertaintyLib.models.adapters.nnunet import NnUNetModel

    out = segment_image(image, NnUNetModel(folder), SegmentOptions(method="ensemble"))
    return {"mean_p1": float(sitk.GetArrayViewFromImage(out.probabilities["organ1"]).mean()),
            "maps": sorted(out.maps), "scores": sorted(out.scores["classes"]["organ1"])}


def command_line(folder: Path, image_path: Path, out: Path) -> dict:
    import SimpleITK as sitk

    from SegUncertaintyLib.cli import main

    rc = main(["segment", str(image_path), "--model", str(folder), "--method", "ensemble", "--out", str(out),
               "--progress", "none"])
    if rc:
        raise SystemExit(f"segment exited {rc}")
    probability = sitk.ReadImage(str(out / "probability_organ1.nrrd"))  # after the peak was taken
    return {"mean_p1": float(sitk.GetArrayViewFromImage(probability).mean()),
            "files": sorted(p.name for p in out.iterdir())}


def child(args) -> None:
    import SimpleITK as sitk

    torch.set_num_threads(args.threads)
    if args.child == "nnunet":  # nnunetv2's trainer lookup imports every trainer module; some need torchvision
        from nnunetv2.inference import predict_from_raw_data

        from SegUncertaintyLib.models.adapters import nnunet as adapter

        predict_from_raw_data.recursive_find_trainer_class_by_name = adapter.find_trainer_class
    else:  # imported before the clock starts, as nnunetv2's modules are for the other way (MONAI: ~4 s)
        from SegUncertaintyLib.inference import whole_volume  # noqa: F401
        from SegUncertaintyLib.models.adapters import nnunet as _adapter  # noqa: F401
    if args.child == "segment":  # the command reads the image itself (inside the clock and the peak)
        from SegUncertaintyLib import cli  # noqa: F401
    else:
        image = sitk.ReadImage(args.image)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if args.child == "segment":
        with tempfile.TemporaryDirectory(dir=Path(args.image).parent) as tmp:
            out = command_line(Path(args.model), Path(args.image), Path(tmp) / "out")
            out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        out = {"nnunet": nnunet, "ours": ours}[args.child](Path(args.model), image)
    out["wall_s"] = time.perf_counter() - start
    out["peak_mib"] = out.get("peak_mib", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    out["before_mib"] = baseline / 1024
    print(json.dumps(out))


def measure(args, way: str, model: Path, image: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", way, "--model", str(model), "--image", str(image),
           "--threads", str(args.threads)]
    return run_child(cmd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[96, 192, 192], help="z y x voxels")
    parser.add_argument("--folds", type=int, default=2)
    parser.add_argument("--features", type=int, nargs="+", default=list(FEATURES),
                        help="features per stage (fewer: a cheaper network, same memory per voxel)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--workdir", default=None, help="keep (and reuse) the model folder and image here")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=WAYS, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    with contextlib.ExitStack() as stack:
        work = Path(args.workdir or stack.enter_context(tempfile.TemporaryDirectory()))
        model, image = prepare_inputs(work, args.folds, tuple(args.shape), tuple(args.features))
        r = {way: measure(args, way, model, image) for way in args.ways}
    print(f"machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, CPU; "
          f"volume {args.shape} (z,y,x) at the plans' spacing, patch {PATCH}, features {tuple(args.features)}, "
          f"{args.folds} folds, no mirroring\n")
    print("| way | wall s | peak MiB | MiB before | mean p(organ1) | time ratio | peak ratio |")
    print("|---|---|---|---|---|---|---|")
    n = r.get("nnunet", {})
    for way, d in r.items():
        if "error" in d:
            print(f"| {WAYS[way]} | {d['error']} | | | | | |")
            continue
        ratios = (f"{d['wall_s'] / n['wall_s']:.2f} | {d['peak_mib'] / n['peak_mib']:.2f}" if "wall_s" in n
                  else "– | –")
        print(f"| {WAYS[way]} | {d['wall_s']:.1f} | {d['peak_mib']:.0f} | {d['before_mib']:.0f} | "
              f"{d['mean_p1']:.5f} | {ratios} |")


if __name__ == "__main__":
    main()
