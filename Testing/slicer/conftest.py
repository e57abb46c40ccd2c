"""Fixtures shared by the Slicer glue and module tests: a real cohort, made once per test module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def cohort_template(tmp_path_factory):
    from Testing.support.cohort_cases import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort_template") / "cohort")


@pytest.fixture
def cohort(cohort_template, tmp_path):
    """A fresh copy of the cohort (tests write marks into it); returns its worklist.csv."""
    folder = shutil.copytree(cohort_template.parent, tmp_path / "cohort", symlinks=True)
    return Path(folder) / "worklist.csv"
