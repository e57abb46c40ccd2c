"""A reviewed segmentation as DICOM: the objects the Slicer module's *Export as DICOM* writes after review.

Objects, one file each in ``<folder>/dicom/`` (built with dicom_objects' builders):

- ``segmentation_reviewed.dcm``: Segmentation Storage, BINARY, one segment per class of the run (label value
  order) holding the segmentation as the reader left it (edits included; segments may overlap), algorithm
  type SEMIAUTOMATIC with the model's identification, the card's terminology and colour;
- ``report_reviewed.dcm``: Comprehensive 3D SR, TID 1500: per class a TID 1411 group referencing its segment,
  with the reviewed volume; per region the reader marked reviewed, a TID 1411 group at a voxel of the region
  (SCOORD3D POINT in the frame of reference), with the region's volume, the map's maximum and mean over it,
  the flagging rule (``map > threshold``) as its method and "Reviewed by a reader" as a qualitative evaluation.

Rules as for a run's objects (dicom_objects): new series in the input's study, the source series and its
instances referenced, patient and study identifiers copied and nothing else identifying added, UIDs derived
from the content (source series, model, method, review state and masks), so exporting the same review again
gives the same objects and a PACS keeps one copy. ``<folder>/manifest.json`` lists them as a ``dicom``
output, so ``seguncertainty send FOLDER`` (cohort/pacs.py) sends them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from .. import __version__
from ..core.errors import UsageError
from ..core.files import write_text_atomic
from ..core.manifest import FORMAT_VERSION, MANIFEST, TOOL
from ..models.card import Member
from ..models.description import ModelDescription
from .dicom_objects import (
    MANUFACTURER,
    MAP_CODES,
    MILLILITRE,
    SCHEME,
    UNITLESS,
    VOLUME,
    derived_uid,
    measurement_report,
    read_sources,
    run_key,
    segment_descriptions,
)

DICOM_FOLDER = "dicom"
SEGMENTATION_FILE, REPORT_FILE = "segmentation_reviewed.dcm", "report_reviewed.dcm"
SERIES_NUMBERS = {"segmentation": 9030, "report": 9031}
POSITION_TOLERANCE_MM = 0.01  # a slice's position against the grid's (as io/dicom.py checks slice positions)
DIRECTION_TOLERANCE = 1e-4
FLAGGED_REGION = hd.sr.CodedConcept("FLAGREGION", SCHEME, "Region flagged for review")
REVIEW_STATUS = hd.sr.CodedConcept("REVIEWSTATUS", SCHEME, "Review status")
REVIEWED = hd.sr.CodedConcept("REVIEWED", SCHEME, "Reviewed by a reader")


@dataclass(frozen=True)
class ReviewedRegion:
    """A flagged region the reader marked reviewed. ``number``: its place in review order (1 = first);
    ``focus_lps``: the centre of one of its voxels, in DICOM patient coordinates (mm); ``max_uncertainty``,
    ``mean_uncertainty``: the map over its voxels."""

    number: int
    voxels: int
    volume_ml: float
    max_uncertainty: float
    mean_uncertainty: float
    focus_lps: tuple[float, float, float]


def description_from_manifest(manifest: Mapping) -> ModelDescription:
    """The model as a run's manifest.json records it (name, version, weights' sha256, labels, and the
    labelmap's terminology): what the SEG's segment descriptions need."""
    try:
        model = manifest["model"]
        labels = {int(k): str(v) for k, v in manifest["labels"].items()}
        members = tuple(Member(Path(m["file"]), m["sha256"]) for m in model.get("members", []))
        name, version = str(model["name"]), str(model["version"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UsageError(f"The run's manifest does not name its model and labels ({exc!r})") from None
    terminology = next((e.get("terminology") for e in manifest.get("outputs", [])
                        if isinstance(e, dict) and e.get("kind") == "labelmap"), None)
    return ModelDescription(name, version, "", "", labels, (), "", Path(model.get("folder", "")), members,
                            {"terminology": terminology or {}})


def sources_on_grid(files: Sequence[str], ijk_to_ras: np.ndarray, shape: Sequence[int]) -> list[pydicom.Dataset]:
    """The source series' headers in the slice order k of a (k, j, i) grid of ``shape`` whose IJK-to-RAS matrix
    is ``ijk_to_ras`` (4 x 4): each slice's columns along i, rows along j and its position at slice k, within
    POSITION_TOLERANCE_MM; UsageError naming the first slice that is not on the grid."""
    headers = read_sources(files)
    if len(headers) != shape[0]:
        raise UsageError(f"The DICOM series has {len(headers)} slices, the segmentation {shape[0]}: it is not on the "
                         "series' grid")
    ijk_to_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(ijk_to_ras, float)
    axes, origin = ijk_to_lps[:3, :3], ijk_to_lps[:3, 3]
    by_k: dict[int, pydicom.Dataset] = {}
    for ds in headers:
        orientation = np.asarray(ds.ImageOrientationPatient, float)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        ijk = np.linalg.solve(axes, np.asarray(ds.ImagePositionPatient, float) - origin)
        k = int(round(ijk[2]))
        on_grid = ((int(ds.Rows), int(ds.Columns)) == tuple(shape[1:])
                   and np.allclose(axes[:, 0], orientation[:3] * column_spacing, atol=DIRECTION_TOLERANCE)
                   and np.allclose(axes[:, 1], orientation[3:] * row_spacing, atol=DIRECTION_TOLERANCE)
                   and np.linalg.norm(axes @ (ijk - [0, 0, k])) <= POSITION_TOLERANCE_MM
                   and 0 <= k < shape[0] and k not in by_k)
        if not on_grid:
            raise UsageError(f"DICOM slice {ds.SOPInstanceUID} does not lie on the segmentation's grid (size, "
                             "orientation or position differ): the volume is not this series as loaded")
        by_k[k] = ds
    return [by_k[k] for k in range(shape[0])]


def _region_group(region: ReviewedRegion, map_name: str, threshold: float, sources: Sequence[pydicom.Dataset],
                  key: str) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    code, meaning = MAP_CODES.get(map_name, (map_name.upper(), map_name.replace("_", " ")))
    measurements = [hd.sr.Measurement(name=VOLUME, value=region.volume_ml, unit=MILLILITRE)]
    for statistic, value in (("max", region.max_uncertainty), ("mean", region.mean_uncertainty)):
        measurements.append(hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"{code}{statistic.upper()}"[:16], SCHEME,
                                    f"{statistic.capitalize()} of {meaning.lower()}"[:64]),
            value=float(value), unit=UNITLESS))
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(key, f"tracking/region/{region.number}"),
                                                     identifier=f"Reviewed region {region.number}"),
        referenced_volume_surface=hd.sr.VolumeSurface(
            "POINT", np.array([region.focus_lps], float), frame_of_reference_uid=sources[0].FrameOfReferenceUID,
            source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)),
        finding_type=FLAGGED_REGION,
        method=hd.sr.CodedConcept("FLAGGED", SCHEME, f"{map_name} > {threshold:.6g}"[:64]),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(REVIEW_STATUS, REVIEWED)])


def write_review_objects(folder: str | Path, manifest: Mapping, masks: Mapping[str, np.ndarray],
                         sources: Sequence[pydicom.Dataset], voxel_ml: float, regions: Sequence[ReviewedRegion] = (),
                         map_name: str = "", threshold: float = float("nan")) -> list[Path]:
    """Write the reviewed SEG and SR (module doc) into ``folder``/dicom and ``folder``/manifest.json; return
    the files written.

    ``manifest``: the run's manifest.json; ``masks``: class name -> (k, j, i) bool mask on the grid of
    ``sources`` (:func:`sources_on_grid`), a class without one is empty; ``voxel_ml``: one voxel's volume (mL);
    ``regions``: the regions marked reviewed, flagged where ``map_name`` > ``threshold``. Both objects are
    built before anything is written.
    """
    folder = Path(folder)
    description = description_from_manifest(manifest)
    labels = {v: n for v, n in description.labels.items() if v != 0}
    shape = (len(sources), int(sources[0].Rows), int(sources[0].Columns))
    stack = np.zeros((*shape, len(labels)), np.uint8)
    for index, (_, name) in enumerate(sorted(labels.items())):
        if name in masks:
            if masks[name].shape != shape:
                raise UsageError(f"The mask of '{name}' has shape {masks[name].shape}, the series {shape}")
            stack[..., index] = masks[name]
    review = {"map": map_name, "threshold": threshold, "reviewed": [asdict(r) for r in regions]}
    key = run_key(str(sources[0].SeriesInstanceUID),
                  {"kind": "review", "model": manifest.get("model"), "method": manifest.get("method"),
                   "n_samples": manifest.get("n_samples"), "review": review}, stack)

    def identity(role: str) -> dict:
        return {"series_instance_uid": derived_uid(key, f"series/{role}"), "series_number": SERIES_NUMBERS[role],
                "sop_instance_uid": derived_uid(key, f"instance/{role}"), "instance_number": 1}

    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(description, labels, algorithm_type="SEMIAUTOMATIC"),
        omit_empty_frames=False, series_description="SegUncertainty reviewed segmentation",
        content_label="REVIEWED", content_description=f"{description.name} reviewed"[:64],
        manufacturer=MANUFACTURER, manufacturer_model_name=description.name[:64], software_versions=__version__,
        device_serial_number=description.version[:64], **identity("segmentation"))
    volumes = {"classes": {name: {"volume_ml": float(stack[..., i].sum() * voxel_ml)}
                           for i, (_, name) in enumerate(sorted(labels.items()))}}
    report = measurement_report(volumes, seg, sources, labels, description, key,
                                extra_groups=[_region_group(r, map_name, threshold, sources, key) for r in regions])
    report.SeriesNumber = SERIES_NUMBERS["report"]
    report.SeriesDescription = "SegUncertainty reviewed report"

    dicom = folder / DICOM_FOLDER
    dicom.mkdir(parents=True, exist_ok=True)
    records = []
    for dataset, name, meaning in (
            (seg, SEGMENTATION_FILE, "Reviewed segmentation, one BINARY segment per class, SEMIAUTOMATIC"),
            (report, REPORT_FILE, "Reviewed volumes and the regions marked reviewed (TID 1500 SR)")):
        dataset.save_as(dicom / name, enforce_file_format=True)
        records.append({"file": name, "sop_class_uid": str(dataset.SOPClassUID),
                        "sop_instance_uid": str(dataset.SOPInstanceUID),
                        "series_instance_uid": str(dataset.SeriesInstanceUID), "meaning": meaning})
    document = {"format_version": FORMAT_VERSION, "tool": f"{TOOL} {__version__}", "input": manifest.get("input"),
                "model": manifest.get("model"), "method": manifest.get("method"), "review": review,
                "outputs": [{"file": DICOM_FOLDER, "kind": "dicom", "objects": records,
                             "meaning": "The reviewed segmentation and its report, new series in the input's study"}]}
    write_text_atomic(folder / MANIFEST, json.dumps(document, indent=2) + "\n")
    return [dicom / SEGMENTATION_FILE, dicom / REPORT_FILE, folder / MANIFEST]


def export_review(folder: str | Path, files: Sequence[str], ijk_to_ras: np.ndarray, manifest: Mapping,
                  masks: Mapping[str, np.ndarray], voxel_ml: float, regions: Sequence[Mapping] = (),
                  map_name: str = "", threshold: float = float("nan")) -> list[Path]:
    """:func:`write_review_objects` for a grid given by ``ijk_to_ras`` and the masks' shape, the sources being
    the series ``files`` (checked on that grid, :func:`sources_on_grid`); ``regions``: ReviewedRegion fields.
    What the Slicer module calls (SegUncertaintyMRML/dicom_export.review_inputs gathers the arguments)."""
    shape = next(iter(masks.values())).shape if masks else None
    if shape is None:
        raise UsageError("The segmentation has none of the run's classes left: nothing to export")
    sources = sources_on_grid(files, ijk_to_ras, shape)
    reviewed = [ReviewedRegion(**{**r, "focus_lps": tuple(float(v) for v in r["focus_lps"])}) for r in regions]
    return write_review_objects(folder, manifest, masks, sources, voxel_ml, reviewed, map_name, threshold)
