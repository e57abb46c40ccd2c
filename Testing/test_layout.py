"""The suite's own layout: test modules in package folders, no imports from conftest, registered markers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTING = Path(__file__).resolve().parent
BUILTIN_MARKERS = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}


def python_files() -> list[Path]:
    return sorted(p for p in TESTING.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_imports_from_conftest():
    offenders = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(TESTING)}: {n}" for n in names if n.split(".")[-1] == "conftest"]
    assert offenders == []


def test_every_test_module_lives_in_a_package_folder():
    """Testing/<folder>/.../test_*.py with an __init__.py in every folder down from Testing/ (so that folders
    may share names with installed modules, such as io and slicer), this file alone at the top level."""
    misplaced = []
    for path in TESTING.rglob("test_*.py"):
        folders = path.relative_to(TESTING).parents
        packages = [TESTING / folder for folder in folders]
        if path != Path(__file__).resolve() and (path.parent == TESTING or
                                                  not all((p / "__init__.py").exists() for p in packages)):
            misplaced.append(str(path.relative_to(TESTING)))
    assert misplaced == []


def used_markers() -> dict[str, str]:
    """Marker name -> a file that uses it: ``pytest.mark.<name>`` anywhere, and the names in a conftest's
    FOLDER_MARKERS."""
    used = {}
    for path in python_files():
        where = str(path.relative_to(TESTING))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and \
                    node.value.attr == "mark" and isinstance(node.value.value, ast.Name) and \
                    node.value.value.id == "pytest":
                used.setdefault(node.attr, where)
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FOLDER_MARKERS" for t in node.targets):
                for names in ast.literal_eval(node.value).values():
                    used.update(dict.fromkeys(names, where))
    return used


def test_every_marker_used_is_registered(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = used_markers()
    assert {"slow", "slicer", "nnunet", "cluster"} <= set(used)
    assert {name: where for name, where in used.items() if name not in registered | BUILTIN_MARKERS} == {}


def test_the_package_configuration_installs_every_library_package_and_the_bundled_models():
    """pyproject's packages, as setuptools expands them, hold every library folder with an __init__.py (a
    hand-written list once left out core and results) and the bundled model folders its package-data names
    (else setuptools warns "Package would be ignored" and a wheel lacks the weights)."""
    from setuptools.config.pyprojecttoml import read_configuration

    root = TESTING.parent
    packages = set(read_configuration(root / "pyproject.toml", expand=True)["tool"]["setuptools"]["packages"])
    library = {".".join(p.parent.relative_to(root).parts) for p in (root / "SegUncertaintyLib").rglob("__init__.py")}
    bundled = {".".join(p.relative_to(root).parts)
               for p in (root / "SegUncertaintyLib/models/bundled").iterdir() if p.is_dir() and p.name[0] != "_"}
    assert library | bundled <= packages
