"""SegUncertaintyLib: medical image segmentation with voxel-wise and subject-level uncertainty.

Slicer-free: imports torch, monai, SimpleITK, numpy, scipy, matplotlib only.
"""

__version__ = "0.1.0"
