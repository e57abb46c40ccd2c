"""A run's results as DICOM objects (highdicom), for a run whose input was a DICOM series.

Objects, one file each in the run's ``dicom/`` folder (README "Hospital use" has the conformance table):

- ``segmentation.dcm``: one segment per class (label value order), algorithm type AUTOMATIC with the model's
  name, version and weights' sha256, the card's terminology and colour; Segmentation Storage, BINARY (the
  default), or with ``seg_type="labelmap"`` Label Map Segmentation Storage, LABELMAP (one frame per slice,
  pixel value = segment number, 0 background);
- ``flagged.dcm``, only for a run with a referral threshold (a calibrated run: scores.json ``referral``):
  Segmentation Storage, BINARY, one segment "Flagged for review", the voxels whose referral map is at or
  above the threshold (calibration.apply.flagged_mask, as scores.json's ``flagged_ml`` counts them);
- ``probability_<class>.dcm`` (the class's name as a safe file name: core.files.safe_stems): Segmentation
  Storage, FRACTIONAL of type PROBABILITY (0-1 in steps of 1/255);
- ``<map>.dcm``: Parametric Map Storage, float32 pixels, a real-world value mapping (identity) with the
  quantity (private scheme :data:`SCHEME`), the unit (UCUM ``1``), a derivation code and the card's
  ``anatomic_region`` as Frame Anatomy (dcmqi's ``paramap2itkimage`` needs both);
- ``report.dcm``: Comprehensive 3D SR, TID 1500 Measurement Report: per class a TID 1411 group that
  references its segment and the source series, with the volume, its 95 % interval, each subject score
  (definition and paper in the code meaning and method) and the reading as a qualitative evaluation.

Rules for every object: a new series in the input's study (Study Instance UID and Frame of Reference copied,
the source instances referenced); patient and study identifiers copied from the input and no other
identifying data added; UIDs derived from the run's content (:func:`derived_uid`), so the same run written
again gives the same objects and a PACS keeps one copy. Every class is a segment even when empty (its frames
are all zero): an empty segment says the class was looked for and not found; an empty flagged segment says
no voxel reached the threshold.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from .. import __version__
from ..calibration.apply import flagged_mask
from ..core.files import safe_stems

SCHEME = "99SEGUNC"  # private coding scheme of this tool (README "Hospital use" lists its codes)
SCHEME_NAME = "SegUncertainty codes"
MANUFACTURER = "SegUncertainty"
UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
MILLILITRE = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
VOLUME = hd.sr.CodedConcept("118565006", "SCT", "Volume")
SERIES_NUMBERS = {"segmentation": 9001, "probability": 9002, "flagged": 9003, "map": 9010, "report": 9020}
SEG_TYPES = {"binary": hd.seg.SegmentationTypeValues.BINARY, "labelmap": hd.seg.SegmentationTypeValues.LABELMAP}
FLAGGED_CATEGORY = codes.SCT.SpatialAndRelationalConcept
FLAGGED_TYPE = hd.sr.CodedConcept("FLAGGED", SCHEME, "Flagged for review")

# quantity codes of the voxel maps: (code value, code meaning <= 64 characters)
MAP_CODES = {
    "entropy": ("ENTROPY", "Normalized predictive entropy"),
    "mutual_information": ("MI", "Mutual information (normalized)"),
    "expected_entropy": ("EXPENT", "Expected entropy (normalized)"),
    "variance": ("VARIANCE", "Maximum class probability variance"),
}
MAP_DERIVATION = hd.sr.CodedConcept("SAMPLING", SCHEME, "Statistics over stochastic model samples")
# subject scores: (code value, code meaning, method: the paper that defines it)
SCORE_CODES = {
    "cv": ("CV", "Volume coefficient of variation over samples", ("HOEBEL2019", "Hoebel et al. 2019")),
    "dpw": ("DPW", "Mean pairwise Dice between samples", ("HOEBEL2019", "Hoebel et al. 2019")),
    "ulabelled": ("ULABELLED", "Mean expected entropy in segment (nats)", ("HOEBEL2019", "Hoebel et al. 2019")),
    "segment_entropy": ("SEGENT", "Mean binary entropy in segment (nats)", ("MEHRTASH2020", "Mehrtash et al. 2020")),
    "diversity": ("DIVERSITY", "Sample diversity (1 - IoU)", ("CZOLBE2021", "Czolbe et al. 2021")),
}
VOLUME_BOUNDS = {"lower": ("VOL025", "Volume 2.5th percentile over samples"),
                 "upper": ("VOL975", "Volume 97.5th percentile over samples")}
READING = hd.sr.CodedConcept("READING", SCHEME, "Uncertainty reading")
READINGS = {"review recommended": hd.sr.CodedConcept("REVIEW", SCHEME, "Review recommended"),
            "within usual range": hd.sr.CodedConcept("USUAL", SCHEME, "Within usual range")}
ALGORITHM_FAMILY = codes.cid7162.ArtificialIntelligence


def derived_uid(run_key: str, role: str) -> str:
    """A 2.25 UID (ISO/IEC 9834-8 form, <= 44 characters) from the SHA-256 of ``run_key`` and ``role``."""
    digest = hashlib.sha256(f"{run_key}\n{role}".encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def run_key(source_series_uid: str, manifest_fields: Mapping, segmentation: np.ndarray) -> str:
    """The run's content hash: the source series, the model, method and settings, and the segmentation."""
    digest = hashlib.sha256(source_series_uid.encode())
    digest.update(json.dumps(manifest_fields, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(segmentation).tobytes())
    return digest.hexdigest()


def read_sources(files: Sequence[str]) -> list[pydicom.Dataset]:
    """The source series' headers (no pixel data), in the order given (the image's slice order)."""
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in files]


def _card_code(triple: Sequence[str]) -> hd.sr.CodedConcept:
    """A card terminology entry, [scheme, value, meaning], as a coded concept."""
    scheme, value, meaning = triple
    return hd.sr.CodedConcept(str(value), str(scheme), str(meaning))


def _common(description, role: str, key: str, number_key: str, offset: int = 0) -> dict:
    return {"series_instance_uid": derived_uid(key, f"series/{number_key}/{offset}"),
            "series_number": SERIES_NUMBERS[number_key] + offset,
            "sop_instance_uid": derived_uid(key, f"instance/{role}"), "instance_number": 1,
            "manufacturer": MANUFACTURER, "manufacturer_model_name": description.name[:64],
            "software_versions": __version__, "device_serial_number": str(description.version)[:64]}


def algorithm_identification(description) -> hd.AlgorithmIdentificationSequence:
    """The model as the algorithm: its name, version and each weight file's sha256 as a parameter."""
    return hd.AlgorithmIdentificationSequence(
        name=description.name[:64], family=ALGORITHM_FAMILY, version=str(description.version)[:64],
        parameters={m.path.name[:64]: f"sha256:{m.sha256}"[:64] for m in description.members} or None)


def segment_descriptions(description, labels: Mapping[int, str], algorithm_type: str = "AUTOMATIC"
                         ) -> list[hd.seg.SegmentDescription]:
    """One description per class (label value order, segment numbers 1..n), with the card's terminology."""
    terminology = description.info.get("terminology", {})
    algorithm = algorithm_identification(description)
    out = []
    for number, (value, name) in enumerate(sorted(labels.items()), start=1):
        term = terminology.get(str(value), {})
        category = _card_code(term["category"]) if "category" in term else codes.SCT.Tissue
        kind = _card_code(term["type"]) if "type" in term else hd.sr.CodedConcept(f"LABEL{value}", SCHEME, name[:64])
        colour = hd.color.CIELabColor.from_rgb(*(np.clip(term["color"], 0, 1) * 255)) if "color" in term else None
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=algorithm_type,
            algorithm_identification=algorithm if algorithm_type != "MANUAL" else None,
            tracking_uid=None, tracking_id=None, display_color=colour))
    return out


def _array(image: sitk.Image, dtype) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image).astype(dtype, copy=False)


def write_dicom_objects(outputs, folder: Path, description, source_files: Sequence[str], key: str,
                        maps: Sequence[str], check_cancel: Callable[[], None] = lambda: None, *,
                        seg_type: str = "binary") -> list[dict]:
    """Write every object of the run into ``folder``; return one manifest record per file.

    ``outputs``: the run's SegmentationOutputs (images on the input grid, z-y-x matching ``source_files``,
    which are in the image's slice order); ``key``: the run's content hash (:func:`run_key`); ``maps``: the
    uncertainty maps to write (those the run computed and the user chose); ``seg_type``: the segmentation's
    SEG type, a key of :data:`SEG_TYPES`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    sources = read_sources(source_files)
    labels = {v: n for v, n in description.labels.items() if v != 0}
    records: list[dict] = []

    def save(dataset, name: str, meaning: str, **extra) -> None:
        dataset.save_as(folder / name, enforce_file_format=True)
        records.append({"file": name, "sop_class_uid": str(dataset.SOPClassUID),
                        "sop_instance_uid": str(dataset.SOPInstanceUID),
                        "series_instance_uid": str(dataset.SeriesInstanceUID), "meaning": meaning, **extra})

    labelmap = _array(outputs.segmentation, np.int64)
    numbers = np.zeros(int(max(labels, default=0)) + 1, np.uint16)
    for number, value in enumerate(sorted(labels), start=1):
        numbers[value] = number
    check_cancel()
    kind = SEG_TYPES[seg_type]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=numbers[np.clip(labelmap, 0, len(numbers) - 1)], segmentation_type=kind,
        segment_descriptions=segment_descriptions(description, labels), omit_empty_frames=False,
        series_description="SegUncertainty segmentation", content_label="SEGMENTATION",
        content_description=f"{description.name} {outputs.method}"[:64],
        **_common(description, "segmentation", key, "segmentation"))
    save(seg, "segmentation.dcm", f"Segmentation (argmax of the mean probability), one {kind.value} SEG, a segment "
         "per class", iod="Label Map Segmentation" if kind.value == "LABELMAP" else "Segmentation",
         segments={str(n): name for n, (_, name) in enumerate(sorted(labels.items()), 1)})

    referral = outputs.scores.get("referral")
    if referral is not None and referral["map"] in outputs.maps:
        check_cancel()
        flagged = flagged_mask(sitk.GetArrayViewFromImage(outputs.maps[referral["map"]]), referral)
        rule = f"{referral['map']} >= {referral['threshold']}"
        calibration = outputs.scores.get("calibration", {}).get("id", "")
        save(flagged_seg(sources, flagged, description, rule, **_common(description, "flagged", key, "flagged")),
             "flagged.dcm", f"Voxels flagged for review: {rule} (referral threshold of calibration {calibration}), "
             "one BINARY segment", iod="Segmentation", rule=rule, voxels=int(np.count_nonzero(flagged)))

    stems = safe_stems(name for _, name in sorted(description.labels.items()))  # as run_folder names files
    for offset, (value, name) in enumerate(sorted(labels.items())):
        if name not in outputs.probabilities:
            continue
        check_cancel()
        probability = np.clip(_array(outputs.probabilities[name], np.float32), 0.0, 1.0)
        fractional = hd.seg.Segmentation(
            source_images=sources, pixel_array=probability, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            segment_descriptions=segment_descriptions(description, {value: name})[:1], omit_empty_frames=False,
            series_description=f"SegUncertainty probability {name}"[:64], content_label="PROBABILITY",
            **_common(description, f"probability/{name}", key, "probability", offset))
        save(fractional, f"probability_{stems[name]}.dcm", f"Mean probability of '{name}' (FRACTIONAL PROBABILITY SEG, "
             "0-1 in steps of 1/255)", iod="Segmentation", label=name)

    for offset, name in enumerate(m for m in MAP_CODES if m in maps and m in outputs.maps):
        check_cancel()
        values = np.ascontiguousarray(_array(outputs.maps[name], np.float32))
        code, meaning = MAP_CODES[name]
        mapping = hd.pm.RealWorldValueMapping(
            lut_label=code[:16], lut_explanation=meaning[:64], unit=UNITLESS,
            value_range=(float(values.min()), float(values.max())), slope=1.0, intercept=0.0,
            quantity_definition=hd.sr.CodedConcept(code, SCHEME, meaning))
        pmap = hd.pm.ParametricMap(
            source_images=sources, pixel_array=values, contains_recognizable_visual_features=False,
            real_world_value_mappings=[mapping], series_description=f"SegUncertainty {name}"[:64],
            voi_lut_transformations=[hd.VOILUTTransformation(  # LINEAR_EXACT: a LINEAR window must be >= 1 wide
                window_center=float(values.max()) / 2, window_width=float(values.max()) or 1.0,
                voi_lut_function="LINEAR_EXACT")], content_label=code[:16],
            **_common(description, f"map/{name}", key, "map", offset))
        _add_derivation(pmap, MAP_DERIVATION)
        _add_frame_anatomy(pmap, description)
        _frames_along_normal(pmap)
        save(pmap, f"{name}.dcm", f"{meaning}, float32 (Parametric Map)", iod="Parametric Map", map=name)

    check_cancel()
    report = measurement_report(outputs.scores, seg, sources, labels, description, key)
    save(report, "report.dcm", "Subject scores, volumes with 95 % intervals and readings (TID 1500 SR)",
         iod="Comprehensive 3D SR")
    return records


def flagged_seg(sources: Sequence[pydicom.Dataset], flagged: np.ndarray, description, rule: str,
                **common) -> hd.seg.Segmentation:
    """The flagged-for-review voxels ((z, y, x) bool on the sources' grid) as a BINARY SEG of one segment,
    algorithm type AUTOMATIC, ``rule`` (e.g. ``entropy >= 0.31``) as its content description. ``common``:
    the series and instance attributes (UIDs, numbers, equipment) as for the run's other objects."""
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="Flagged for review", segmented_property_category=FLAGGED_CATEGORY,
        segmented_property_type=FLAGGED_TYPE, algorithm_type="AUTOMATIC",
        algorithm_identification=algorithm_identification(description),
        display_color=hd.color.CIELabColor.from_rgb(255, 230, 25))
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=np.asarray(flagged, np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        omit_empty_frames=False, series_description="SegUncertainty flagged for review", content_label="FLAGGED",
        content_description=rule[:64], **common)


def _add_derivation(dataset: pydicom.Dataset, code: hd.sr.CodedConcept) -> None:
    """Add ``code`` as the Derivation Code of every frame's Derivation Image item (highdicom writes the item
    with the source image reference but no code; dcmqi's paramap2itkimage needs one)."""
    for frame in dataset.PerFrameFunctionalGroupsSequence:
        for item in frame.DerivationImageSequence:
            item.DerivationCodeSequence = [code]


def _frames_along_normal(dataset: pydicom.Dataset) -> None:
    """Store the float frames in ascending order along the DICOM slice normal (row x column cosines).

    highdicom stores them in descending order (its volume convention); each frame carries its own position,
    so both orders are valid, but dcmqi 1.5.7's paramap2itkimage fills its volume in stored order from the
    lowest position and so would flip the map along the normal.
    """
    frames = dataset.PerFrameFunctionalGroupsSequence
    cosines = np.asarray(dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient,
                         float)
    normal = np.cross(cosines[:3], cosines[3:])
    along = [float(np.dot(f.PlanePositionSequence[0].ImagePositionPatient, normal)) for f in frames]
    order = np.argsort(along, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return
    pixels = np.frombuffer(dataset.FloatPixelData, np.float32).reshape(len(frames), -1)
    dataset.FloatPixelData = np.ascontiguousarray(pixels[order]).tobytes()
    dataset.PerFrameFunctionalGroupsSequence = [frames[int(i)] for i in order]


def _add_frame_anatomy(dataset: pydicom.Dataset, description) -> None:
    """Add the card's ``anatomic_region`` (region code and laterality, as the model's author states them) as
    the Frame Anatomy functional group: dcmqi's paramap2itkimage reads it unconditionally and crashes without
    it. A card without one gives no Frame Anatomy (no laterality is guessed)."""
    anatomy = description.info.get("anatomic_region")
    if not anatomy:
        return
    item = pydicom.Dataset()
    item.AnatomicRegionSequence = [_card_code(anatomy["region"])]
    item.FrameLaterality = anatomy["laterality"]
    dataset.SharedFunctionalGroupsSequence[0].FrameAnatomySequence = [item]


def measurement_report(scores: Mapping, seg: hd.seg.Segmentation, sources: Sequence[pydicom.Dataset],
                       labels: Mapping[int, str], description, key: str, extra_groups: Sequence = ()
                       ) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report: per class one TID 1411 group referencing its segment, then
    ``extra_groups`` (further measurement groups, e.g. the reviewed regions of results/dicom_review.py)."""
    groups = []
    readings = scores.get("readings", {})
    for number, (_, name) in enumerate(sorted(labels.items()), start=1):
        values = scores["classes"].get(name)
        if values is None:
            continue
        measurements = []
        if values.get("volume_ml") is not None:
            measurements.append(hd.sr.Measurement(name=VOLUME, value=float(values["volume_ml"]), unit=MILLILITRE))
        for bound, value in zip(("lower", "upper"), values.get("volume_ml_interval95") or (), strict=False):
            if value is not None:
                code, meaning = VOLUME_BOUNDS[bound]
                measurements.append(hd.sr.Measurement(name=hd.sr.CodedConcept(code, SCHEME, meaning),
                                                      value=float(value), unit=MILLILITRE))
        for score, (code, meaning, (method, paper)) in SCORE_CODES.items():
            if values.get(score) is not None:
                measurements.append(hd.sr.Measurement(
                    name=hd.sr.CodedConcept(code, SCHEME, meaning), value=float(values[score]), unit=UNITLESS,
                    method=hd.sr.CodedConcept(method, SCHEME, paper)))
        review = [r["reading"] for r in readings.get(name, {}).values()]
        evaluations = []
        if review:
            verdict = "review recommended" if "review recommended" in review else "within usual range"
            evaluations.append(hd.sr.QualitativeEvaluation(READING, READINGS[verdict]))
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid(key, f"tracking/{name}"),
                                                         identifier=name[:64]),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID)),
            finding_type=_finding(description, name),
            measurements=measurements or None, qualitative_evaluations=evaluations or None))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(key, "device"), manufacturer_name=MANUFACTURER, model_name=description.name[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.cid100.ImagingProcedure, imaging_measurements=[*groups, *extra_groups],
        title=codes.cid7021.ImagingMeasurementReport)
    return hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report, series_description="SegUncertainty scores",
        **{k: v for k, v in _common(description, "report", key, "report").items()
           if k not in ("software_versions", "device_serial_number", "manufacturer_model_name")})


def _finding(description, name: str) -> hd.sr.CodedConcept:
    """The class's segmented property type from the card, or a private code naming the class."""
    terminology = description.info.get("terminology", {})
    for value, n in description.labels.items():
        if n == name and "type" in terminology.get(str(value), {}):
            return _card_code(terminology[str(value)]["type"])
    return hd.sr.CodedConcept(f"LABEL-{name}"[:16], SCHEME, name[:64])
