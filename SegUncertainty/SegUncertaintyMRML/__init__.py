"""MRML glue of the SegUncertainty Slicer module.

Plain modules that import ``slicer``, ``vtk`` and ``numpy`` only (never Qt or ScriptedLoadableModule),
so they run inside Slicer and, for the tests, on a bare MRML scene from PyPI's slicer-core.
"""
