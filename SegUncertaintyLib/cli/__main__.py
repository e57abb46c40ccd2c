"""``python -m SegUncertaintyLib.cli``: the same entry as the ``seguncertainty`` console script."""

from . import run

run()
