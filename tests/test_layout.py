"""The shape of the code: the library is a handful of subpackages stacked in layers (a module imports only
from its own layer or those below; no module imports one that imports it back, lazily inside a function
included), modules and functions stay small enough to read, and pages render: no tensor math in
pages/*.py."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "vislab"
PAGES = ROOT / "pages"

# The library's layers, lowest first. `_support` is the `_`-prefixed modules at the top of the package
# (paths, file io, train/eval modes, hooks); `front` is vislab/__init__ and __main__, which may use all.
LAYERS = ("_support", "figures", "data", "models", "training", "export", "views", "teaching", "serving", "cli",
          "front")
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


# ----------------------------------------------------------------------------------------------- import graph

def module_names(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name below `vislab`: 'training.runs', '_paths', 'cli' (a
    subpackage's __init__ is the subpackage itself), '' for vislab/__init__."""
    names = {}
    for p in sorted(package.rglob("*.py")):
        parts = list(p.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = p
    return names


def imported_modules(source: str, modules: set[str], here: str = "") -> set[str]:
    """The vislab modules `source` imports, at any depth (top level, inside functions, under `if`):
    `from vislab.training import runs` is 'training.runs', `from vislab.training.runs import load` too,
    `from vislab import _paths` is '_paths', `import vislab.views.cam` is 'views.cam'; relative imports are
    resolved against `here` (the importing module's dotted name)."""
    found = set()

    def add(base: str, names: list[str]) -> None:
        for name in names:
            dotted = f"{base}.{name}" if base else name
            found.add(dotted if dotted in modules else base)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                package = here.split(".")[: len(here.split(".")) - node.level] if here else []
                base = ".".join(package + ([node.module] if node.module else []))
            elif node.module == "vislab" or (node.module or "").startswith("vislab."):
                base = node.module[len("vislab."):] if node.module != "vislab" else ""
            else:
                continue
            add(base, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found |= {a.name[len("vislab."):] for a in node.names if a.name.startswith("vislab.")}
    return {m for m in found if m in modules}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    modules = module_names(package)
    return {name: imported_modules(p.read_text(), set(modules), name) - {name, ""} for name, p in modules.items()}


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


def layer_of(module: str) -> str:
    top = module.split(".")[0]
    if module in ("", "__main__"):
        return "front"
    return "_support" if top.startswith("_") else top


def layer_breaches(graph: dict[str, set[str]], layers: tuple[str, ...] = LAYERS) -> list[str]:
    """Each import that runs up the stack, 'a -> b (layer A below layer B)'; a module in no layer is one too."""
    rank = {layer: i for i, layer in enumerate(layers)}
    found = []
    for module, deps in sorted(graph.items()):
        if layer_of(module) not in rank:
            found.append(f"{module}: in no layer of {layers}")
            continue
        for dep in sorted(deps):
            if rank.get(layer_of(dep), len(layers)) > rank[layer_of(module)]:
                found.append(f"{module} -> {dep} ({layer_of(module)} is below {layer_of(dep)})")
    return found


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "modules that import each other back: " + "; ".join(" -> ".join(c) for c in found)


def test_the_subpackages_import_only_down_the_stack():
    graph = import_graph()
    assert {layer_of(m) for m in graph} == set(LAYERS), "a layer without a module, or a module without a layer"
    found = layer_breaches(graph)
    assert not found, "imports that run up the stack: " + "; ".join(found)


def test_the_cycle_and_layer_rules_see_lazy_indirect_and_upward_imports(tmp_path):
    """The rules themselves can fail: a cycle through an import inside a function, three modules long, across
    subpackages; and a low layer that imports a higher one."""
    for pkg in ("data", "models", "views"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "data" / "a.py").write_text("from vislab.models import b\n")
    (tmp_path / "models" / "b.py").write_text("import vislab.views.c as c\n")
    (tmp_path / "views" / "c.py").write_text("def f():\n    if True:\n        from vislab.data.a import thing\n")
    (tmp_path / "views" / "d.py").write_text("from vislab.data import a\nfrom vislab import _paths\nfrom . import c\n")
    (tmp_path / "_paths.py").write_text("")
    graph = import_graph(tmp_path)
    assert graph["data.a"] == {"models.b"} and graph["models.b"] == {"views.c"}
    assert graph["views.c"] == {"data.a"} and graph["views.d"] == {"data.a", "_paths", "views.c"}
    assert cycles(graph) == [["data.a", "models.b", "views.c", "data.a"]]
    assert layer_breaches(graph) == ["data.a -> models.b (data is below models)",
                                     "models.b -> views.c (models is below views)"]


def test_the_readmes_module_map_names_every_module():
    """The README's map is by subpackage and matches the tree: every module of src/vislab is named in it."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The library and the CLI"):readme.index("`import vislab` is a small front door")]
    names = {name.rsplit(".", 1)[-1] for name in module_names() if name and name != "__main__"}
    missing = sorted(n for n in names if f"`{n}`" not in section)
    assert not missing, f"modules missing from the README's module map: {missing}"
    for sub in {name.split(".")[0] for name in module_names() if "." in name}:
        assert f"| `{sub}` |" in section, f"subpackage {sub} has no row of its own in the README's map"


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def long_code(package: Path = PACKAGE, max_module: int = MAX_MODULE_LINES,
              max_function: int = MAX_FUNCTION_LINES) -> list[str]:
    """Modules over `max_module` lines and functions over `max_function` lines (decorators to last line)."""
    found = []
    for name, p in module_names(package).items():
        text = p.read_text()
        if len(text.splitlines()) > max_module:
            found.append(f"{name}: {len(text.splitlines())} lines")
        for f in _functions(ast.parse(text)):
            start = min([f.lineno] + [d.lineno for d in f.decorator_list])
            if f.end_lineno - start + 1 > max_function:
                found.append(f"{name}.{f.name} (line {f.lineno}): {f.end_lineno - start + 1} lines")
    return found


def test_modules_and_functions_stay_short():
    found = long_code()
    assert not found, "too long to read: " + "; ".join(found)


def test_the_length_rule_counts_lines(tmp_path):
    (tmp_path / "long.py").write_text("def f():\n" + "    x = 1\n" * 80 + "\n\ndef g():\n    pass\n")
    assert long_code(tmp_path, max_module=80, max_function=80) == ["long: 85 lines", "long.f (line 1): 81 lines"]
    assert long_code(tmp_path, max_module=85, max_function=81) == []


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

# Every key a page puts in st.session_state, reads from it or gives a widget is a named constant, defined where
# it belongs (the page that owns the widget, a pages/_*.py helper, pages/_state.py for the lab's own keys). A
# key written out is a string literal, or an f-string that starts with one (`f"cm_{i}"`; `f"{key}_src"`
# builds on a key passed in, and `f"{CM_PREFIX}{i}"` on a constant), used as st.session_state[...] (or
# through a name bound to st.session_state, `ss`), its .get / .pop / .setdefault, `... in st.session_state`,
# or a widget's key=; a key marked kept, `_state.kept(...)`, is looked at inside the call.
STATE_METHODS = ("get", "pop", "setdefault")
RAW_KEYS_NOT_YET: dict[str, str] = {}  # a page that cannot switch yet goes here with why (strict xfail)


def _written_out(node: ast.expr) -> bool:
    if isinstance(node, ast.Call) and (_dotted(node.func) or "").split(".")[-1] == "kept" and node.args:
        return _written_out(node.args[0])
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


@pytest.mark.parametrize("page", [*_pages(RAW_KEYS_NOT_YET), pytest.param(ROOT / "app.py", id="app.py")])
def test_pages_name_their_session_keys(page):
    hits = raw_session_keys(page.read_text())
    assert not hits, f"{page.name} writes session keys out; name each as a constant: " + "; ".join(hits)


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
st.button("y", key=_images.DL_PREFIX + n)
LR_SWEEP = "lr_sweep"
st.number_input("e", key=_state.kept(TRAIN_EPOCHS)), st.slider("s", key=kept(f"{SIZE_PREFIX}{n}"))
st.number_input("e", key=_state.kept("train_epochs")), st.slider("s", key=kept(f"size_{n}"))
ss[_state.kept("picked")] = True
label = "st.session_state['x'] in a string is fine"
'''
    assert raw_session_keys(page) == ["line 5: 'lr_sweep'", "line 6: 'train_lr'", "line 7: '_shown_active'",
                                      "line 8: 'plan_version'", "line 10: 'feat_n'", "line 11: f'cm_{i}'",
                                      "line 16: _state.kept('train_epochs')", "line 16: kept(f'size_{n}')",
                                      "line 17: _state.kept('picked')"]
