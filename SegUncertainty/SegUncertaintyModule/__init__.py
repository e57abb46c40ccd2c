"""The scripted module's code, one file per concern (SegUncertainty.py composes it for Slicer).

- ``parameters``: the parameter node (what the panel shows, saved with the scene).
- ``environment``: the Slicer version check and where the child process finds Python and the library.
- ``logic`` composes ``SegUncertaintyLogic`` from ``models_logic`` (model list, Add model, packages),
  ``run_logic`` (the background run), ``review_logic`` (maps, threshold, regions, corrections, export) and
  ``cohort_logic`` (the cohort worklist).
- ``*_panel``: the panel's sections, mixed into ``SegUncertaintyWidget``: ``models_panel``, ``run_panel``,
  ``review_panel``, ``cohort_panel``.
- ``process``: the background command line's arguments and its progress lines read back.
- ``scenario``: the self-test's run on a synthetic head (the pytest suite runs it too).

The logic files use no Qt; the MRML work itself is in SegUncertaintyMRML.
"""

# Every part, each after the parts it imports: the order in which the panel's Reload reloads them.
PARTS = ("environment", "process", "parameters", "models_logic", "run_logic", "review_logic", "cohort_logic",
         "logic", "models_panel", "run_panel", "review_panel", "cohort_panel", "scenario")
