"""The library's sub-packages stand in layers: no module imports from a higher layer or a sibling, and no
import cycle exists between modules (imports inside functions count). core imports nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import SegUncertaintyLib

PACKAGE = Path(SegUncertaintyLib.__file__).parent
# bottom to top; the README's "Layout" section shows the same order
LAYERS = (("core", "sample"), ("io", "calibration"), ("models",), ("inference",), ("results",),
          ("cohort", "evaluation"), ("cli",))
LAYER = {name: level for level, names in enumerate(LAYERS) for name in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The library modules ``name`` imports anywhere in its file (functions too), resolved to module names."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = name.split(".") if is_package else name.split(".")[:-1]
            if node.level:
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer_of(module: str) -> tuple[str, int | None]:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    return top, LAYER.get(top)


def test_every_sub_package_has_a_layer():
    tops = {layer_of(m)[0] for m in modules()} - {""}
    assert tops <= set(LAYER), f"sub-packages without a layer: {sorted(tops - set(LAYER))}"


def test_no_module_imports_from_a_higher_layer_or_a_sibling():
    wrong = []
    for source, targets in graph().items():
        top, level = layer_of(source)
        for target in targets:
            other, other_level = layer_of(target)
            if other and other != top and (other_level is None or level is None or other_level >= level):
                wrong.append(f"{source} -> {target}")
    assert not wrong, "imports upward or sideways:\n" + "\n".join(sorted(wrong))


def strongly_connected(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one node."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in g:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_modules_or_sub_packages():
    g = graph()
    assert strongly_connected(g) == []
    packages: dict[str, set[str]] = {}
    for source, targets in g.items():
        packages.setdefault(layer_of(source)[0], set()).update(layer_of(t)[0] for t in targets)
    assert strongly_connected({k: v - {k} for k, v in packages.items()}) == []


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in modules() if layer_of(m)[0] == "core"))
def test_core_imports_nothing_heavy(module):
    """The command line checks its options and the Slicer module plans runs with core alone."""
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'SimpleITK', 'monai', 'scipy') "
            "if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"
