"""Write a run's outputs and the manifest that names every file and its meaning.

The whole run is written into a staging folder and swapped in at the end (:mod:`.publish`): a folder
with ``manifest.json`` holds one complete run, a failed or cancelled run changes nothing, and an output
folder is only replaced when every file in it was written by an earlier run (listed in its manifest).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .. import __version__
from ..core.errors import CancelledError, UsageError
from ..core.files import safe_stems
from ..core.manifest import MANIFEST, build_manifest, model_record, run_files  # noqa: F401 (run_files re-exported)
from ..core.options import SegmentOptions
from ..core.vocabulary import MAP_CHOICES
from ..inference.assembly import MAP_MEANINGS, SegmentationOutputs
from ..inference.model_grid import samples_on_input_grid
from ..io.images import write_image, write_json
from ..io.publish import OutputFolder, output_folder
from ..models.description import ModelDescription
from .overview_process import DrawHere
from .overview_slices import overview_request

# SimpleITK releases the GIL while it compresses: two writers halve the time of a CT's maps on 2 cores
# (BENCHMARKS.md, nnU-Net section), at the cost of two volumes in memory at once instead of one.
IMAGE_WRITERS = 2
DICOM_FOLDER = "dicom"


def gzipped(kind: str, map_dtype: str, compress: bool | None) -> bool:
    """Whether a volume of this ``kind`` (manifest kind) is written with gzip: ``compress`` when chosen; by
    default labelmaps (a few % of their raw size) and float16-rounded maps (about half), not float32 maps:
    gzip makes those only about 10 % smaller and their writing about 50x slower (BENCHMARKS.md, 1 mm head)."""
    if compress is not None:
        return compress
    return kind == "labelmap" or map_dtype == "float16"


def write_outputs(outputs: SegmentationOutputs, out_dir: str | Path | OutputFolder, description: ModelDescription,
                  input_name: str, options: SegmentOptions | None = None, settings: dict | None = None,
                  cancelled: Callable[[], bool] | None = None, dicom_sources: Sequence[str] | None = None,
                  overview_drawer: DrawHere | None = None) -> Path:
    """Write images, scores.json, overview.png and manifest.json into ``out_dir``; return the manifest.

    ``out_dir``: a folder path, or an :class:`OutputFolder` already entered (the command line takes it
    before the long part). ``description``: the model's name, version, folder, members, labels and info.
    ``options``: the output fields of SegmentOptions (checked): ``format``; ``maps``, which of
    :data:`MAP_CHOICES` to write (None: all; a map the run did not compute, e.g. mutual information of a
    one-sample run, is skipped); ``map_dtype``, the precision of the maps and probabilities (see
    core.vocabulary.MAP_DTYPES); ``compress``, gzip the volumes (:func:`gzipped`); ``overview``;
    ``save_samples``, also each class's per-sample segmentations on the input grid, bit-packed
    (``samples_<class>.npz``: ``bits`` (ceil(T/8), z, y, x) uint8, bit t % 8 of byte t // 8 is sample t);
    ``dicom``, also the DICOM objects in ``dicom/`` (:mod:`.dicom_objects`) from ``dicom_sources``, the source
    series' files in the image's slice order. ``settings``: the manifest's settings (default:
    ``options.settings(None)``). ``overview_drawer``: draws the overview (default: in this process; the
    command line passes its :class:`.overview_process.OverviewProcess`).
    Files are named by class with ``core.files.safe_stems`` (``probability_left_kidney.nrrd``); the class's
    name is the entry's ``label``. ``cancelled`` is polled between files: CancelledError, nothing published.
    The manifest lists exactly the files written, each image with its dtype.
    """
    options = (options or SegmentOptions()).check()
    settings = options.settings(None) if settings is None else settings
    if not isinstance(out_dir, OutputFolder):
        with output_folder(out_dir) as folder:
            return write_outputs(outputs, folder, description, input_name, options, settings, cancelled,
                                 dicom_sources, overview_drawer)
    if options.dicom and not dicom_sources:
        raise UsageError("--dicom needs a DICOM series as input (its files are the objects' sources)")
    fmt, map_dtype = options.format, options.map_dtype
    chosen = set(options.maps or MAP_CHOICES)

    def check_cancel() -> None:
        if cancelled is not None and cancelled():
            raise CancelledError()

    stems = safe_stems(name for _, name in sorted(description.labels.items()))  # file names by class
    # (look-up, file stem, kind, meaning, extra manifest fields) per image. The volumes may be files read at
    # each look-up (a run with a scratch folder): each is looked up when its writer starts.
    images = [(lambda: outputs.segmentation, "segmentation", "labelmap",
               "Segmentation: argmax of the mean probability",
               {"labels": {str(k): v for k, v in description.labels.items()},
                "terminology": description.info.get("terminology", {})})]
    images += [(functools.partial(outputs.probabilities.__getitem__, name), f"probability_{stems[name]}", "probability",
                f"Mean probability of '{name}' over samples, 0-1", {"label": name})
               for name in (outputs.probabilities if "probability" in chosen else ())]
    images += [(functools.partial(outputs.maps.__getitem__, name), name, "uncertainty", MAP_MEANINGS[name],
                {"map": name}) for name in outputs.maps if name in chosen]

    entries: list[dict] = []
    drawer = overview_drawer or DrawHere()
    with out_dir.staged(cancelled) as stage, contextlib.closing(drawer):
        if options.overview:  # first: a drawing process draws while the images are written
            title = f"{Path(input_name).name} — {description.name} — {outputs.method}"
            drawer.start(overview_request(outputs, stage / "overview.png", title, description.labels,
                                          description.info.get("terminology")))

        def write_one(job) -> dict:
            look_up, stem, kind, meaning, extra = job
            check_cancel()
            image, filename = look_up(), f"{stem}.{fmt}"
            if kind != "labelmap" and map_dtype == "float16":
                image = _rounded_to_float16(image)
                extra = {**extra, "precision": "float16"}
            write_image(image, stage / filename, gzipped(kind, map_dtype, options.compress))
            return {"file": filename, "kind": kind, "meaning": meaning, "dtype": image.GetPixelIDTypeAsString(),
                    **extra}

        entries.extend(_in_parallel(write_one, images, check_cancel))
        if options.save_samples and outputs.model_grid_sample_bits is not None:
            for k, name in enumerate(n for v, n in sorted(description.labels.items()) if v != 0):
                check_cancel()
                bits = samples_on_input_grid(outputs.model_grid_sample_bits[k], outputs.n_samples,
                                             outputs.model_grid_image, outputs.segmentation)
                np.savez_compressed(stage / f"samples_{stems[name]}.npz", bits=bits, n_samples=outputs.n_samples)
                entries.append({"file": f"samples_{stems[name]}.npz", "kind": "samples", "label": name,
                                "meaning": f"Per-sample segmentations of '{name}' on the input grid, bit-packed: "
                                           "bits[t // 8] >> (t % 8) & 1 is sample t"})
        if options.dicom:
            entries.append(_dicom_entry(outputs, stage, description, dicom_sources, settings, chosen, check_cancel,
                                        options.seg_type))
        write_json(outputs.scores, stage / "scores.json")
        entries.append({"file": "scores.json", "kind": "scores",
                        "meaning": "Subject-level scores per class, with definitions and directions"})
        if options.overview:
            drawer.finish(check_cancel)
            entries.append({"file": "overview.png", "kind": "figure",
                            "meaning": "Mid-slices: image with segmentation contour and uncertainty maps"})
        manifest = build_manifest(version=__version__, input_name=input_name, description=description,
                                  method=outputs.method, n_samples=outputs.n_samples, device=outputs.device,
                                  settings=settings, notes=outputs.notes, outputs=entries,
                                  inference=outputs.inference)
        write_json(manifest, stage / MANIFEST)
    return out_dir.path / MANIFEST


def check_dicom_input(path: str | Path, series: str | None) -> None:
    """UsageError (exit 2) unless ``path`` is a DICOM series folder: ``--dicom`` objects need their sources."""
    if series is None and not Path(path).is_dir():
        raise UsageError(f"--dicom needs a DICOM series as input; {path} is not a DICOM folder")


def _dicom_entry(outputs: SegmentationOutputs, stage: Path, description: ModelDescription, sources: Sequence[str],
                 settings: dict, chosen: set[str], check_cancel: Callable[[], None], seg_type: str = "binary") -> dict:
    """Write the DICOM objects into ``stage/dicom``; the manifest entry of that folder, listing each object."""
    from .dicom_objects import run_key, write_dicom_objects  # highdicom: only for --dicom

    key = run_key(str(settings.get("dicom_series")),
                  {"model": model_record(description), "method": outputs.method, "n_samples": outputs.n_samples,
                   "settings": {k: v for k, v in settings.items() if k != "device_requested"}},
                  sitk.GetArrayViewFromImage(outputs.segmentation))
    objects = write_dicom_objects(outputs, stage / DICOM_FOLDER, description, sources, key,
                                  [m for m in MAP_CHOICES if m in chosen], check_cancel, seg_type=seg_type)
    return {"file": DICOM_FOLDER, "kind": "dicom", "objects": objects,
            "meaning": "DICOM objects of this run (SEGs, Parametric Maps, TID 1500 SR), a new series each in the "
                       "input's study, UIDs derived from the run's content"}


def _in_parallel(function: Callable, jobs: Sequence, check_cancel: Callable[[], None]) -> list:
    """``[function(job) for job in jobs]`` on IMAGE_WRITERS threads, at most that many at once. The caller's
    thread starts each job and wakes every 0.1 s, so a signal handler (the cancel flag) runs promptly and no
    job starts after a cancel; the first error is raised once the running jobs are done. The caller waits on
    the running jobs only: waiting on finished ones returns at once and would spin against the writers."""
    futures: list[Future] = []
    with ThreadPoolExecutor(max_workers=IMAGE_WRITERS) as pool:
        for job in jobs:
            while True:
                check_cancel()
                failed = next((f for f in futures if f.done() and f.exception() is not None), None)
                if failed is not None:
                    raise failed.exception()
                running = [f for f in futures if not f.done()]
                if len(running) < IMAGE_WRITERS:
                    break
                wait(running, timeout=0.1, return_when=FIRST_COMPLETED)
            futures.append(pool.submit(function, job))
        return [future.result() for future in futures]


def _rounded_to_float16(image):
    """``image`` (float32) with every value rounded to the nearest float16, still float32 (same grid)."""
    array = sitk.GetArrayViewFromImage(image).astype(np.float16).astype(np.float32)
    rounded = sitk.GetImageFromArray(array)
    rounded.CopyInformation(image)
    return rounded
