"""SegmentOptions.check: the one validation of a run's options (command line, cohort and Python callers)."""

import pytest

from SegUncertaintyLib.core.errors import UsageError
from SegUncertaintyLib.core.options import SegmentOptions


def test_check_returns_the_options_it_accepts():
    options = SegmentOptions(method="ensemble", maps=())  # (): only the segmentation and scores
    assert options.check() is options
    assert SegmentOptions(maps=("entropy", "probability")).check().maps == ("entropy", "probability")


@pytest.mark.parametrize("change, flag", [
    ({"max_batch": 0}, "--max-batch"), ({"max_batch": True}, "--max-batch"), ({"max_batch": 2.0}, "--max-batch"),
    ({"overlap": 1.0}, "--overlap"), ({"overlap": -0.1}, "--overlap"), ({"overlap": float("nan")}, "--overlap"),
    ({"device": "gpu"}, "--device"), ({"format": "mha"}, "--format"), ({"map_dtype": "float64"}, "--map-dtype"),
    ({"maps": ("entropy", "colour")}, "--maps"), ({"samples": 0}, "samples"),
])
def test_check_refuses_each_option_out_of_range(change, flag):
    with pytest.raises(UsageError, match=flag):
        SegmentOptions(**change).check()
