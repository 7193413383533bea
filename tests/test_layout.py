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


def _pages(not_yet: dict[str, str], skip: tuple[str, ...] = ()) -> list:
    """Every pages/*.py, the pages' shared Streamlit helpers (pages/_*.py) included, less `skip`; those in
    `not_yet` must still fail (strict xfail: once fixed, they leave the list)."""
    return [pytest.param(p, id=p.name, marks=[pytest.mark.xfail(strict=True, reason=not_yet[p.name])]
                         if p.name in not_yet else [])
            for p in sorted(PAGES.glob("*.py")) if p.name not in skip]


@pytest.mark.parametrize("page", _pages(NOT_YET))
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


# ----------------------------------------------------------------------------------------------- session keys

# Every key a page puts in st.session_state, reads from it or gives a widget is a named constant of
# pages/_state.py. A key written out in a page is a string literal, or an f-string that starts with one
# (`f"cm_{i}"`; `f"{key}_src"` builds on a key passed in, and `f"{CM_PREFIX}{i}"` on a constant), used as
# st.session_state[...] (or through a name bound to st.session_state, `ss`), its .get / .pop / .setdefault,
# `... in st.session_state`, or a widget's key=.
STATE_METHODS = ("get", "pop", "setdefault")
RAW_KEYS_NOT_YET: dict[str, str] = {}  # a page that cannot switch yet goes here with why (strict xfail)


def _written_out(node: ast.expr) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, ast.JoinedStr) and bool(node.values) and isinstance(node.values[0], ast.Constant)


def raw_session_keys(source: str) -> list[str]:
    """Keys written out in `source`, one 'line N: key' each."""
    tree = ast.parse(source)
    state = {"st.session_state"} | {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign)
                                    and _dotted(n.value) == "st.session_state"
                                    for t in n.targets if isinstance(t, ast.Name)}
    hits = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and _dotted(node.value) in state:
            key = node.slice
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STATE_METHODS
              and _dotted(node.func.value) in state and node.args):
            key = node.args[0]
        elif (isinstance(node, ast.Compare) and isinstance(node.ops[0], (ast.In, ast.NotIn))
              and _dotted(node.comparators[0]) in state):
            key = node.left
        elif isinstance(node, ast.keyword) and node.arg == "key":
            key = node.value
        if key is not None and _written_out(key):
            hits.append((key.lineno, f"line {key.lineno}: {ast.unparse(key)}"))
    return [text for _, text in sorted(set(hits))]


@pytest.mark.parametrize("page", _pages(RAW_KEYS_NOT_YET, skip=("_state.py",)))  # _state.py defines them
def test_pages_name_their_session_keys_from_state(page):
    hits = raw_session_keys(page.read_text())
    assert not hits, f"{page.name} writes session keys out; name them in pages/_state.py: " + "; ".join(hits)


def test_the_session_key_rule_catches_every_way_of_writing_a_key():
    page = '''
import streamlit as st
from pages import _state
ss = st.session_state
a = ss["lr_sweep"]
b = st.session_state.get("train_lr")
ss.pop("_shown_active", None)
if "plan_version" in st.session_state:
    pass
st.slider("n", 1, 9, key="feat_n")
st.toggle("t", key=f"cm_{i}")
ok = ss[_state.LR_SWEEP], ss.get(_state.TRAIN_LR), st.radio("x", [], key=f"{key}_src")
st.button("y", key=_state.DL_PREFIX + n)
label = "st.session_state['x'] in a string is fine"
'''
    assert raw_session_keys(page) == ["line 5: 'lr_sweep'", "line 6: 'train_lr'", "line 7: '_shown_active'",
                                      "line 8: 'plan_version'", "line 10: 'feat_n'", "line 11: f'cm_{i}'"]
