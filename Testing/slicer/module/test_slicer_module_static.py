"""Static checks of the Slicer module that need no Qt: widget names, parameter bindings, packaging, imports.

The widget cannot run here (no Qt, no slicer.app), so what can be checked from the files is checked.
"""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MODULE = ROOT / "SegUncertainty"
MODULE_PY = MODULE / "SegUncertainty.py"  # the entry point Slicer loads
MODULE_PARTS = MODULE / "SegUncertaintyModule"  # its module, panel and logic, one file per concern
MODULE_SCRIPTS = [MODULE_PY, *sorted(MODULE_PARTS.glob("*.py"))]
# The logic's files: usable from the Python console without the panel, so no Qt and no widget.
LOGIC_PARTS = sorted({MODULE_PARTS / "logic.py", MODULE_PARTS / "environment.py", MODULE_PARTS / "parameters.py",
                      *MODULE_PARTS.glob("*_logic.py")})
UI_FILE = MODULE / "Resources" / "UI" / "SegUncertainty.ui"
STDLIB = set(sys.stdlib_module_names)


def ui_widgets() -> dict[str, ET.Element]:
    return {w.get("name"): w for w in ET.parse(UI_FILE).iter("widget")}


def cmake_list(text: str, variable: str) -> list[str]:
    """Entries of ``set(variable ...)`` in a CMakeLists text, with ${MODULE_NAME} expanded."""
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return [e.replace("${MODULE_NAME}", "SegUncertainty") for e in match.group(1).split()]


def parameter_fields() -> set[str]:
    tree = ast.parse((MODULE_PARTS / "parameters.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegUncertaintyParameterNode")
    return {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}


def imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in a file (``a.b`` for ``from a.b import c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def imported_top_modules(path: Path) -> set[str]:
    return {name.split(".")[0] for name in imported_modules(path)}


def test_every_widget_the_code_uses_exists_in_the_ui():
    """self.ui.<name> in the module's files must name a widget of the .ui (childWidgetVariables)."""
    used = {name for path in MODULE_SCRIPTS for name in re.findall(r"self\.ui\.(\w+)", path.read_text())}
    assert {"applyButton", "thresholdSlider", "modelComboBox", "openWorklistButton"} <= used, \
        "widget uses not found: the regex or the module changed"
    missing = used - set(ui_widgets())
    assert not missing, f"widgets used in the module but absent from the .ui: {sorted(missing)}"


def top_level_names(path: Path) -> dict[str, str]:
    """Names a file binds at its top level: {name: "class" or "import"}."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            names[node.name] = "class"
        elif isinstance(node, ast.ImportFrom):
            names.update({a.asname or a.name: "import" for a in node.names})
    return names


def test_entry_point_has_what_slicer_looks_up():
    """Slicer instantiates SegUncertainty.SegUncertainty (qSlicerScriptedLoadableModule::setPythonSource), its
    Widget (qSlicerScriptedLoadableModuleWidget) and Logic, and runTest finds <module>Test in the module
    named by the module class's __module__ (ScriptedLoadableModule.runTest): the module class is defined in
    SegUncertainty.py, the others are defined or imported there."""
    names = top_level_names(MODULE_PY)
    assert names.get("SegUncertainty") == "class", "the module class must be defined in SegUncertainty.py"
    for name in ("SegUncertaintyWidget", "SegUncertaintyLogic", "SegUncertaintyTest", "SegUncertaintyParameterNode"):
        assert name in names, name


@pytest.mark.parametrize("path", MODULE_SCRIPTS, ids=lambda p: p.name)
def test_module_files_stay_small_with_a_docstring(path):
    """The entry point is short, as in Slicer's template; each part holds one concern."""
    limit = 250 if path == MODULE_PY else 300
    lines = len(path.read_text().splitlines())
    assert lines <= limit, f"{path.name} has {lines} lines (at most {limit}): split it by concern"
    assert ast.get_docstring(ast.parse(path.read_text())), f"{path.name} needs a docstring saying what it holds"


@pytest.mark.parametrize("path", LOGIC_PARTS, ids=lambda p: p.name)
def test_logic_parts_use_no_qt_and_no_widget(path):
    assert not imported_top_modules(path) & {"qt", "ctk", "PythonQt"}, path.name
    assert "self.ui" not in path.read_text(), path.name


def test_ui_parameter_bindings_match_the_parameter_node():
    """Every SlicerParameterName in the .ui is a field of the parameter node, and each field that the panel
    edits directly is bound once."""
    bindings = {}
    for name, widget in ui_widgets().items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bindings.setdefault(prop.find("string").text, []).append(name)
    fields = parameter_fields()
    assert set(bindings) <= fields, f"bound to unknown parameters: {sorted(set(bindings) - fields)}"
    assert all(len(w) == 1 for w in bindings.values()), bindings
    unbound = fields - set(bindings)
    assert unbound == {"model", "method", "segmentation"}, f"parameters without a widget: {sorted(unbound)}"


def test_ui_parameter_names_are_dynamic_properties():
    """SlicerParameterName is no Qt property of any widget: the .ui must mark it stdset="0" (a dynamic
    property), as Slicer's own .ui files do (Modules/Scripted/LineProfile/Resources/UI/LineProfile.ui)."""
    properties = [p for w in ui_widgets().values() for p in w.findall("property")
                  if p.get("name") == "SlicerParameterName"]
    assert properties and all(p.get("stdset") == "0" for p in properties)


def test_ui_is_well_formed_with_unique_names_and_declared_custom_widgets():
    tree = ET.parse(UI_FILE)
    names = [w.get("name") for w in tree.iter("widget")]
    assert len(names) == len(set(names)) and all(names), "widget names must be unique and non-empty"
    declared = {c.find("class").text for c in tree.iter("customwidget")}
    used = {w.get("class") for w in tree.iter("widget")}
    custom = {c for c in used if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"custom widgets not declared: {sorted(custom - declared)}"


def test_module_cmake_lists_every_script_and_resource():
    text = (MODULE / "CMakeLists.txt").read_text()
    scripts = set(cmake_list(text, "MODULE_PYTHON_SCRIPTS"))
    on_disk = {str(p.relative_to(MODULE)) for p in MODULE.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk, f"listed only: {scripts - on_disk}; not listed: {on_disk - scripts}"
    resources = cmake_list(text, "MODULE_PYTHON_RESOURCES")
    assert all((MODULE / r).is_file() for r in resources), resources
    assert "WITH_GENERIC_TESTS" in text and "slicerMacroBuildScriptedModule" in text


def test_extension_cmake_installs_the_whole_library():
    text = (ROOT / "CMakeLists.txt").read_text()
    lib = ROOT / "SegUncertaintyLib"
    scripts = set(cmake_list(text, "SegUncertaintyLib_PYTHON_SCRIPTS"))
    on_disk = {str(p.relative_to(ROOT)) for p in lib.rglob("*.py") if "__pycache__" not in p.parts}
    assert scripts == on_disk, f"listed only: {scripts - on_disk}; not listed: {on_disk - scripts}"
    resources = set(cmake_list(text, "SegUncertaintyLib_PYTHON_RESOURCES"))
    data = {str(p.relative_to(ROOT)) for p in lib.rglob("*")
            if p.is_file() and p.suffix in (".json", ".pt", ".md", ".gz")}
    assert resources == data, f"listed only: {resources - data}; not listed: {data - resources}"
    for field in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                  "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert f"set({field} " in text, field


def test_catalog_entry_agrees_with_the_cmake():
    entry = json.loads((ROOT / "Resources" / "SegUncertainty.json").read_text())
    text = (ROOT / "CMakeLists.txt").read_text()
    assert entry["category"] == re.search(r'set\(EXTENSION_CATEGORY "(.*?)"\)', text).group(1)
    assert entry["build_dependencies"] == re.search(r'set\(EXTENSION_DEPENDS "(.*?)"\)', text).group(1).split()
    assert entry["scm_url"].startswith("https://") and entry["tier"] in (1, 3, 5)
    for url in re.search(r'set\(EXTENSION_SCREENSHOTURLS "(.*?)"\)', text).group(1).split():
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), f"screenshot in the CMake but not in the repo: {url}"
    assert (ROOT / re.search(r'set\(EXTENSION_ICONURL ".*?/main/(.*?)"\)', text).group(1)).is_file()


def test_extensions_index_requirements():
    """ExtensionsIndex: a LICENSE file (the Apache-2.0 text pyproject names), a repository whose name starts
    with "Slicer" (the extension keeps its name), homepage and images from that repository, and the minimum
    Slicer version stated where users read it and checked by the module."""
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = "Apache-2.0"' in (ROOT / "pyproject.toml").read_text()
    entry = json.loads((ROOT / "Resources" / "SegUncertainty.json").read_text())
    repo = re.fullmatch(r"https://github\.com/([\w-]+)/([\w-]+)\.git", entry["scm_url"])
    assert repo and repo.group(2).startswith("Slicer"), entry["scm_url"]
    text = (ROOT / "CMakeLists.txt").read_text()
    assert "project(SegUncertainty)" in text
    assert f'set(EXTENSION_HOMEPAGE "https://github.com/{repo.group(1)}/{repo.group(2)}")' in text
    for field in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        urls = re.search(rf'set\({field} "(.*?)"\)', text).group(1).split()
        assert all(u.startswith(f"https://raw.githubusercontent.com/{repo.group(1)}/{repo.group(2)}/") for u in urls)
    assert "Slicer 5.12" in (ROOT / "README.md").read_text() and "Slicer 5.12" in text
    assert "MINIMUM_SLICER = (5, 12)" in (MODULE_PARTS / "environment.py").read_text()


# Library modules the glue may use: they import the standard library only (checked below), so the panel can
# open a cohort's worklist before torch and the other packages are installed.
GLUE_LIBRARY_MODULES = {"SegUncertaintyLib.calibration.store", "SegUncertaintyLib.cohort.review",
                        "SegUncertaintyLib.cohort.worklist", "SegUncertaintyLib.core.files",
                        "SegUncertaintyLib.core.manifest", "SegUncertaintyLib.core.methods"}


@pytest.mark.parametrize("path", sorted((MODULE / "SegUncertaintyMRML").glob("*.py")), ids=lambda p: p.name)
def test_glue_imports_only_slicer_vtk_numpy(path):
    """The MRML glue must run under slicer-core: no Qt, CTK, ScriptedLoadableModule or torch."""
    library = {name for name in imported_modules(path) if name.split(".")[0] == "SegUncertaintyLib"}
    assert library <= GLUE_LIBRARY_MODULES, library
    third_party = imported_top_modules(path) - STDLIB - {"__future__", "SegUncertaintyLib"}
    assert third_party <= {"slicer", "vtk", "numpy", "vtkITK"}, third_party  # vtkITK: Slicer's own readers
    slicer_qt_parts = {"slicer.ScriptedLoadableModule", "slicer.parameterNodeWrapper", "slicer.i18n"}
    assert not imported_modules(path) & slicer_qt_parts


@pytest.mark.parametrize("path", sorted((ROOT / "SegUncertaintyLib").rglob("*.py")), ids=lambda p: p.name)
def test_library_never_imports_slicer_or_qt(path):
    assert not imported_top_modules(path) & {"slicer", "qt", "ctk", "vtk", "PythonQt", "SegUncertaintyMRML"}


@pytest.mark.parametrize("path", MODULE_SCRIPTS, ids=lambda p: p.name)
def test_module_imports_no_heavy_package_at_import_time(path):
    """torch/monai are imported lazily (after asking to install them), never at module import."""
    tree = ast.parse(path.read_text())
    top_level = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top_level |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module)
    top_level -= MODULE_LIBRARY_MODULES  # the library's standard-library-only core (checked below)
    heavy = {"torch", "monai", "SimpleITK", "scipy", "matplotlib", "jsonschema", "psutil", "SegUncertaintyLib"}
    assert not {name.split(".")[0] for name in top_level} & heavy, top_level


# Library modules the module's own scripts may import when Slicer loads them: the methods the panel offers,
# its devices and exit codes.
MODULE_LIBRARY_MODULES = {"SegUncertaintyLib.core.errors", "SegUncertaintyLib.core.methods",
                          "SegUncertaintyLib.core.options"}


@pytest.mark.parametrize("name", sorted(GLUE_LIBRARY_MODULES | MODULE_LIBRARY_MODULES))
def test_library_modules_of_the_glue_import_the_standard_library_only(name):
    """Imported in a fresh interpreter, they load no third-party package (torch, numpy, SimpleITK...)."""
    import subprocess

    code = (f"import sys; before = set(sys.modules); import {name}; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    loaded = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert set(loaded) - STDLIB <= {"SegUncertaintyLib"}, loaded
