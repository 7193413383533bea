"""The shape of the code: imports inside src/vislab read top-down (no module imports one that imports it
back, lazily inside a function included), and pages render: no tensor math in pages/*.py."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vislab"
PAGES = ROOT / "pages"


# ----------------------------------------------------------------------------------------------- import graph

def imported_modules(source: str, modules: set[str]) -> set[str]:
    """The vislab modules `source` imports, at any depth (top level, inside functions, under `if`)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vislab":  # from vislab import data, models
                found |= {a.name for a in node.names if a.name in modules}
            elif node.module.startswith("vislab."):  # from vislab.data import scan_folder
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.ImportFrom) and node.level == 1:  # from . import data / from .data import x
            found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("vislab.")}
    return found & modules


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = {p.stem for p in package.glob("*.py")}
    return {p.stem: imported_modules(p.read_text(), modules) - {p.stem} for p in sorted(package.glob("*.py"))}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as a path a -> b -> ... -> a (depth-first search, white/grey/black)."""
    state, stack, found = {}, [], []

    def visit(node: str) -> None:
        state[node] = "grey"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "grey":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "black"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "modules that import each other back: " + "; ".join(" -> ".join(c) for c in found)


def test_the_cycle_finder_sees_lazy_and_indirect_cycles(tmp_path):
    """The rule itself can fail: a cycle through an import inside a function, three modules long."""
    (tmp_path / "a.py").write_text("from vislab import b\n")
    (tmp_path / "b.py").write_text("import vislab.c as c\n")
    (tmp_path / "c.py").write_text("def f():\n    if True:\n        from vislab.a import thing\n")
    (tmp_path / "d.py").write_text("from vislab import a, paths\n")  # imports into the cycle: not itself one
    graph = import_graph(tmp_path)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]


# ----------------------------------------------------------------------------------------------- pages

# A page may name torch's types and devices and turn gradients off; any other call of a function under
# `torch.` (or `F.` / `nn.functional.`) is tensor math that belongs in the library.
ALLOWED = re.compile(r"torch\.(device|cuda|no_grad|inference_mode|Tensor|dtype|float\w*|int\w*|bool|Size|"
                     r"OutOfMemoryError)(\.|$)")
MATH = re.compile(r"(torch|F|nn\.functional)\.")
NOT_YET = {  # pages that still batch images themselves: they move to views.batch with their own issue's work
}


def _dotted(node: ast.expr) -> str | None:
    """`torch.nn.functional.interpolate` for that attribute chain; None for anything else (`f(x).numpy`)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def tensor_math(source: str) -> list[str]:
    """Calls in `source` that do tensor math, one 'line N: name(...)' each (comments and strings ignored)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        name = _dotted(node.func) if isinstance(node, ast.Call) else None
        if name and MATH.match(name) and not ALLOWED.match(name):
            hits.append((node.lineno, f"line {node.lineno}: {name}(...)"))
    return [text for _, text in sorted(hits)]


def _pages() -> list:
    """Every pages/*.py, the pages' shared Streamlit helpers (pages/_*.py) included."""
    return [pytest.param(p, id=p.name, marks=[pytest.mark.xfail(strict=True, reason=NOT_YET[p.name])]
                         if p.name in NOT_YET else [])
            for p in sorted(PAGES.glob("*.py"))]


@pytest.mark.parametrize("page", _pages())
def test_pages_hold_no_tensor_math(page):
    hits = tensor_math(page.read_text())
    assert not hits, f"{page.name} computes with torch; move it into src/vislab: " + "; ".join(hits)


def test_the_page_rule_catches_math_and_lets_devices_through():
    page = '''
import torch
import torch.nn.functional as F
x = torch.stack([a, b])  # (B, 3, H, W)
m = F.interpolate(x, size=(4, 4))
d = torch.device("cpu") if torch.cuda.is_available() else None
with torch.no_grad():
    pass
label = "torch.stack(...) in a string is fine"
'''
    assert tensor_math(page) == ["line 4: torch.stack(...)", "line 5: F.interpolate(...)"]
    assert tensor_math("t = torch.nn.functional.interpolate(torch.as_tensor(m)[None], size=s)[0].numpy()") == [
        "line 1: torch.as_tensor(...)", "line 1: torch.nn.functional.interpolate(...)"]
