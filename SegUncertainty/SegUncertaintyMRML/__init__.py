"""MRML glue of the SegUncertainty Slicer module.

Plain modules that import ``slicer``, ``vtk`` and ``numpy`` only (never Qt or ScriptedLoadableModule),
so they run inside Slicer and, for the tests, on a bare MRML scene from PyPI's slicer-core; also
``vtkITK``, Slicer's own reader library (a module of its own in Slicer, flattened into ``slicer`` in
slicer-core, so imported with that fallback).
"""

# Every part, each after the parts it imports: the order in which the panel's Reload reloads them.
PARTS = ("files", "volumes", "segments", "overlays", "scores_table", "regions", "flagged_voxels", "corrections",
         "results", "persistence", "cohort_scene", "calibrated_referral", "dicom_export")
