"""Names the command line offers before anything heavy is imported (no torch, MONAI or SimpleITK here).

The modules that implement them re-export these names: one definition each.
"""

METHODS = ("softmax", "mc_dropout", "ensemble", "tta", "ensemble+mc_dropout", "ensemble+tta")  # sampling methods
FORMATS = ("nrrd", "nii.gz")  # output image formats
MAP_NAMES = ("entropy", "expected_entropy", "mutual_information", "variance")  # voxel uncertainty maps
MAP_DTYPES = ("float32", "float16")  # how maps and probabilities are stored (float16: ~3 significant digits)
