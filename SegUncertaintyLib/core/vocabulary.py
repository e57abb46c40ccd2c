"""Names the command line offers before anything heavy is imported (no torch, MONAI or SimpleITK here).

The modules that implement them re-export these names: one definition each.
"""

from .methods import DEFAULT_METHOD, METHODS  # noqa: F401 (sampling methods: core/methods.py defines them)

DEFAULT_MODEL = "brainmask-t1"  # the bundled model used when none is named
OUTPUT_FORMATS = ("nrrd", "nii.gz")  # output image formats
MAP_NAMES = ("entropy", "expected_entropy", "mutual_information", "variance")  # voxel uncertainty maps
MAP_CHOICES = (*MAP_NAMES, "probability")  # what --maps may name ("probability": every class's probability map)
# Precision of the written maps and probabilities. "float16" rounds each value to float16 (11 significant
# bits, ~3 decimal digits: steps of at most 2**-11 = 0.0005 on 0-1 maps) and stores it as float32, since
# NRRD, NIfTI through SimpleITK and Slicer have no 16-bit float type; the zeroed low bits compress well.
MAP_DTYPES = ("float32", "float16")
