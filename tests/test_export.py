import datetime as dt
import re
import urllib.parse
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from vislab import cli
from vislab.export import formats as export, netron as netron_web
from vislab.models import freezing, factory as models
from vislab.views import layer_order
from vislab.training import runs

# (model, input size): the tiny timm test models at 64 px (test_vit only runs at its 160 px) and a torchvision one
FAMILIES = [("test_resnet", 64), ("test_efficientnet", 64), ("test_convnext", 64), ("test_vit", 160),
            ("mobilenet_v3_small", 64)]


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return models.build_architecture(name)


def _state(model: nn.Module):
    """Everything export must leave alone: weights and buffers, train flags, hooks, requires_grad."""
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()}, hooks,
            {n: p.requires_grad for n, p in model.named_parameters()})


def _assert_unchanged(model: nn.Module, before) -> None:
    weights, flags, hooks, grads = _state(model)
    assert weights.keys() == before[0].keys()
    assert all(torch.equal(weights[k], before[0][k]) for k in weights)
    assert (flags, hooks, grads) == before[1:]


def _reference_diff(run, model: nn.Module, size: int) -> float:
    """Our own check, independent of export's: a fresh batch of 3 through the reloaded file and the model."""
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(7))  # (B, C, H, W)
    model.eval()
    with torch.no_grad():
        return (torch.as_tensor(run(x)) - model(x)).abs().max().item()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")  # our own reload below
@pytest.mark.parametrize("name,size", FAMILIES)
def test_torchscript_reloads_and_reproduces(name, size, tmp_path):
    model = _model(name).train()  # export must switch to eval and back
    before = _state(model)
    result = export.export_model(model, (3, size, size), tmp_path / "m.pt", "torchscript")
    assert result.ok and result.verified, result.reason
    assert result.max_abs_diff <= result.tol == export.TOLERANCE["torchscript"]
    assert result.path.is_file() and result.size_bytes == result.path.stat().st_size > 0
    assert any("torch.jit.trace" in w and "deprecated" in w for w in result.warnings)  # reported, not hidden
    _assert_unchanged(model, before)
    assert _reference_diff(torch.jit.load(str(result.path)), model, size) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name,size", FAMILIES[:4])  # torchvision's mobilenets take ~8 s each in the ONNX exporter
def test_onnx_reloads_and_reproduces(name, size, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX files can't be run here")
    model = _model(name)
    before = _state(model)
    result = export.export_model(model, (3, size, size), tmp_path / "m.onnx", "onnx")
    assert result.ok and result.verified, result.reason
    assert result.max_abs_diff <= 1e-3
    _assert_unchanged(model, before)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert _reference_diff(lambda x: session.run(None, {"image": x.numpy()})[0], model, size) <= 1e-3


@pytest.mark.parametrize("name,size", [("test_resnet", 64), ("test_vit", 160)])
def test_pt2_reloads_and_reproduces(name, size, tmp_path):
    model = _model(name)
    before = _state(model)
    result = export.export_model(model, (3, size, size), tmp_path / "m.pt2", "pt2",
                                 real_inputs=torch.randn(5, 3, size, size))
    assert result.ok and result.verified, result.reason
    assert result.checked == "2 random inputs, 5 real images"
    # the archive's root folder is the file's own name (Netron can't open a dotted one), no temp folder left
    assert zipfile.ZipFile(result.path).namelist()[0].startswith("m/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "vislab_home"]
    _assert_unchanged(model, before)
    assert _reference_diff(torch.export.load(str(result.path)).module(), model, size) <= 1e-4


class FrozenBranch(nn.Module):
    """Forward takes a branch on the data: tracing records only the branch its example input took."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.fc(self.conv(x).mean((2, 3)))  # (B, 2)
        if x.abs().max() > 10:  # bright images: never true for the random example, true for the real ones
            return -y
        return y


@pytest.mark.parametrize("fmt", export.FORMATS)
def test_an_export_that_does_not_reproduce_is_refused(fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime not installed: ONNX outputs can't be compared")
    out = tmp_path / "exports" / f"broken{export.SUFFIX[fmt]}"
    real = torch.randn(2, 3, 8, 8) * 100  # (B, C, H, W), takes the other branch
    result = export.export_model(FrozenBranch(), (3, 8, 8), out, fmt, real_inputs=real)
    assert not result.ok and result.path is None
    assert list(out.parent.iterdir()) == []  # neither the file nor a partial one
    if fmt == "pt2":  # torch.export refuses data-dependent control flow itself
        assert result.reason.startswith("pt2 export failed") and "data-dependent" in result.reason
    else:  # tracing froze the branch: the check finds it on the real images and says why
        assert "does not reproduce the model" in result.reason and "real images" in result.reason
        assert "control flow" in result.reason and "TracerWarning" in result.reason
        assert result.max_abs_diff > 1
    if fmt == "onnx":  # the torch.export-based exporter can't take the branch either: the legacy one traced it
        assert any("used the legacy TorchScript-based exporter" in w for w in result.warnings)


def test_a_refused_export_keeps_the_older_file(tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"older export")
    bright = torch.full((1, 3, 8, 8), 50.0)  # (B, C, H, W), takes the branch the trace did not record
    result = export.export_model(FrozenBranch(), (3, 8, 8), out, "torchscript", real_inputs=bright)
    assert not result.ok and out.read_bytes() == b"older export"


def test_train_flags_are_restored_module_by_module(tmp_path):
    model = _model("test_resnet").train()
    model.layer1.eval()  # a sub-block in eval on its own must stay so
    freezing.apply(model, freezing.preset(model, "head")[0])  # BatchNorm pre-hooks, frozen parameters
    before = _state(model)
    assert export.export_model(model, (3, 64, 64), tmp_path / "m.pt2", "pt2").ok
    _assert_unchanged(model, before)
    assert model.training and not model.layer1.training


def test_export_name():
    when = dt.date(2026, 11, 28)
    assert export.export_name("mobilenet_v2", "head", "torchscript", when) == "mobilenet_v2_head_2026-11-28.pt"
    assert export.export_name("mobilenet_v2", "two-phase", "onnx", when) == "mobilenet_v2_two-phase_2026-11-28.onnx"
    assert export.export_name("hf_hub:timm/vit tiny", None, "pt2", when) == "hf_hub-timm-vit-tiny_2026-11-28.pt2"
    assert re.fullmatch(r"resnet18_full_\d{4}-\d\d-\d\d\.pt2", export.export_name("resnet18", "full", "pt2"))
    with pytest.raises(ValueError, match="format"):
        export.export_name("resnet18", "full", "tflite")


class Reordered(nn.Module):
    """Defines head, b, a (print order) but runs a, act, b, act, pool, head; `unused` never runs."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.b = nn.Conv2d(8, 8, 1)
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        x = self.act(self.a(x))  # (B, 8, H, W)
        x = self.act(self.b(x))  # the same ReLU again: listed once, at its first call
        return self.head(self.pool(x).flatten(1))  # (B, 3)


def test_execution_order_differs_from_definition_order():
    model = Reordered()
    model.a.requires_grad_(False)
    assert layer_order.definition_order(model) == ["head", "b", "a", "act", "pool", "unused"]
    order, source = layer_order.traced_order(model, (3, 8, 8))
    assert order == ["a", "act", "b", "pool", "head"] and source == "torch.export graph"
    rows = {r["name"]: r for r in layer_order.layer_table(model, (3, 8, 8))}
    assert [r["name"] for r in layer_order.layer_table(model, (3, 8, 8))] == ["a", "act", "b", "pool", "head", "unused"]
    assert {n for n, r in rows.items() if r["moved"]} == {"b", "head"}  # a, act, pool keep their relative order
    assert rows["b"] == {"name": "b", "type": "Conv2d", "exec_index": 2, "def_index": 1, "moved": True,
                         "params": 8 * 8 + 8, "trainable": True}
    assert rows["a"]["trainable"] is False and rows["act"]["params"] == 0 and rows["act"]["trainable"] is False
    assert rows["unused"]["exec_index"] is None and not rows["unused"]["moved"]


def test_two_swapped_layers_mark_the_one_that_jumped_ahead():
    class Swapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Linear(4, 4)
            self.a = nn.Linear(4, 4)

        def forward(self, x):
            return self.b(self.a(x))

    rows = layer_order.layer_table(Swapped(), (4,))
    assert [(r["name"], r["moved"]) for r in rows] == [("a", True), ("b", False)]


def test_graph_order_matches_the_call_order_of_a_real_model():
    model = _model("test_efficientnet")
    before = _state(model)
    graph = layer_order.execution_order(model, (3, 64, 64))
    hooks = layer_order._hook_order(model, (3, 64, 64))  # every leaf call, Identity included
    assert graph == [n for n in hooks if n in set(graph)]
    assert graph[0] == "conv_stem" and graph[-1] == "classifier"
    _assert_unchanged(model, before)


def test_untraceable_model_falls_back_to_hooks_and_says_so():
    order, source = layer_order.traced_order(FrozenBranch(), (3, 8, 8))
    assert order == ["conv", "fc"] and source.startswith("forward hooks (torch.export failed")


def streamlit_get(registry, path: str) -> tuple[int, bytes]:
    """GET `path` from Streamlit's own component routes (the handler `streamlit run` serves
    /component/<name>/<file> with) over `registry`, through ASGI in this process: (status, body)."""
    import asyncio

    from starlette.applications import Starlette
    from streamlit.web.server.starlette.starlette_routes import create_component_routes

    app = Starlette(routes=create_component_routes(registry, ""))
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    raw, _, query = path.partition("?")
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": urllib.parse.unquote(raw), "raw_path": raw.encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(b"host", b"lab.example:8501")], "server": ("lab.example", 8501),
             "client": ("192.0.2.7", 50000)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _registered(*viewers):
    """A real Streamlit component registry holding each viewer's folder, named as pages/_netron.py names it."""
    from streamlit.components.lib.local_component_registry import LocalComponentRegistry
    from streamlit.components.v1.custom_component import CustomComponent

    registry = LocalComponentRegistry()
    for v in viewers:
        registry.register_component(CustomComponent(f"pages._netron.{v.token}", path=str(v.folder), url=None,
                                                    module_name="pages._netron"))
    return registry


def test_a_netron_viewer_folder_holds_netrons_web_files_and_one_model(tmp_path):
    pytest.importorskip("netron", reason="netron not installed")
    exports = tmp_path / "lab" / "export"
    exports.mkdir(parents=True)
    (exports / "first.onnx").write_bytes(b"first model bytes")
    (exports / "second.pt").write_bytes(b"second model bytes")
    (exports / "secret.txt").write_text("another file of the lab")
    web = {p.name for p in netron_web.web_files()}
    assert "index.html" in web and "browser.js" in web and not any(n.endswith(".py") for n in web)
    staging = netron_web.Staging(root=tmp_path)
    try:
        assert staging.root.stat().st_mode & 0o777 == 0o700  # private: not readable by other users
        a, b = staging.viewer(exports / "first.onnx"), staging.viewer(exports / "second.pt")
        assert a.token != b.token and re.fullmatch(r"[0-9a-f]{32}", a.token) and a.folder.parent == staging.root
        assert {p.name for p in a.folder.iterdir()} == web | {"first.onnx"}  # the lab's other files: never
        assert a.file.read_bytes() == b"first model bytes" and a.page == "index.html?url=first.onnx"
        page = (a.folder / "index.html").read_text()
        stock = (netron_web.package_dir() / "index.html").read_text()
        assert '<meta name="date"' in stock and '<meta name="date"' not in page  # no 180-day lock-out
        assert page.splitlines() == [line for line in stock.splitlines() if '<meta name="date"' not in line]
        with pytest.raises(FileNotFoundError):
            staging.viewer(exports / "missing.onnx")
        (exports / "index.html").write_text("not a model")
        with pytest.raises(ValueError, match="netron's own files"):
            staging.viewer(exports / "index.html")
        assert {p.name for p in staging.root.iterdir()} == {"web", a.token, b.token}  # the refused left nothing
        a.close()
        assert not a.folder.exists() and not a.open and b.open and (exports / "first.onnx").is_file()
        a.close()  # idempotent
    finally:
        staging.close()
    assert not staging.root.exists() and (exports / "second.pt").read_bytes() == b"second model bytes"
    assert netron_web.hosted_url() == "https://netron.app"


def test_streamlit_serves_a_viewer_and_its_one_file_and_nothing_else(tmp_path):
    """Through Streamlit's own component handler: the page, netron's scripts and the exported file answer
    200; the lab's other files, another viewer's file, a path out of the folder, an unknown or closed viewer
    answer 404 (or 400); and nothing served names a loopback address."""
    pytest.importorskip("netron", reason="netron not installed")
    for lab in ("lab_a", "lab_b"):
        (tmp_path / lab).mkdir()
        (tmp_path / lab / f"{lab}.onnx").write_bytes(f"model of {lab}".encode())
        (tmp_path / lab / "state.json").write_text("{}")
    staging = netron_web.Staging(root=tmp_path)
    try:
        a, b = staging.viewer(tmp_path / "lab_a" / "lab_a.onnx"), staging.viewer(tmp_path / "lab_b" / "lab_b.onnx")
        registry = _registered(a, b)
        base = f"/component/pages._netron.{a.token}"
        status, page = streamlit_get(registry, f"{base}/{a.page}")
        assert status == 200 and b"<title>Netron</title>" in page
        assert streamlit_get(registry, f"{base}/lab_a.onnx?cb=1") == (200, b"model of lab_a")
        assert streamlit_get(registry, f"/component/pages._netron.{b.token}/lab_b.onnx") == (200, b"model of lab_b")
        for other in ("lab_b.onnx", "state.json", "netron.py", "__init__.py", "web/index.html"):
            assert streamlit_get(registry, f"{base}/{other}")[0] == 404, other
        assert streamlit_get(registry, f"{base}/../pages._netron.{b.token}/lab_b.onnx")[0] == 400
        assert streamlit_get(registry, f"{base}/%2e%2e/%2e%2e/lab_a/state.json")[0] == 400
        assert streamlit_get(registry, f"/component/pages._netron.{'0' * 32}/lab_a.onnx")[0] == 404
        served = [streamlit_get(registry, f"{base}/{p.name}") for p in sorted(a.folder.iterdir())]
        assert all(status == 200 for status, _ in served) and len(served) == len(netron_web.web_files()) + 1
        named = [p.name for p, (_, body) in zip(sorted(a.folder.iterdir()), served)
                 if b"127.0.0.1" in body or (p.suffix in (".html", ".js") and b"localhost" in body)]
        assert named == []  # netron's page opens the model relative to itself: no host is named in any code
        a.close()
        assert streamlit_get(registry, f"{base}/lab_a.onnx")[0] == 404
        assert streamlit_get(registry, f"{base}/{a.page}")[0] == 404
    finally:
        staging.close()


def test_the_served_netron_has_no_cookie_notice_and_no_telemetry(tmp_path):
    """netron's browser.js asks ipinfo.io, shows "This app uses cookies…" over the graph and starts Google
    Analytics; the staged copy leaves out exactly those two calls and nothing else."""
    pytest.importorskip("netron", reason="netron not installed")
    stock = (netron_web.package_dir() / "browser.js").read_text(encoding="utf-8")
    calls = ["await consent();", "await telemetry();"]
    assert all(call in stock for call in calls)  # the installed netron still decides it there
    (tmp_path / "m.onnx").write_bytes(b"model")
    staging = netron_web.Staging(root=tmp_path)
    try:
        served = (staging.viewer(tmp_path / "m.onnx").folder / "browser.js").read_text(encoding="utf-8")
    finally:
        staging.close()
    assert not any(call in served for call in calls)
    assert served.splitlines() == [line for line in stock.splitlines() if line.strip() not in calls]
    assert netron_web.served_text("view.js", "await consent();\n") == "await consent();\n"  # only browser.js


def _tiny_onnx(path) -> None:
    """A three-node ONNX graph (Conv -> Relu -> GlobalAveragePool), written in milliseconds."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((4, 3, 3, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["y"])], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])], initializer=[w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


@pytest.mark.browser
def test_netron_in_chromium_draws_the_graph_without_asking_for_cookies_or_calling_out(tmp_path):
    """A viewer folder served as a static folder, in headless Chromium that may reach only that origin: the
    graph is drawn with no cookie notice on the way, no address of another host is asked, no cookie is set."""
    from tests import browser

    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("netron", reason="netron not installed")
    pytest.importorskip("onnx", reason="onnx not installed")
    import functools
    import http.server
    import threading
    import time

    _tiny_onnx(tmp_path / "tiny.onnx")
    staging = netron_web.Staging(root=tmp_path)
    viewer = staging.viewer(tmp_path / "tiny.onnx")
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(viewer.folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://127.0.0.1:{server.server_address[1]}"
    refused = []

    def route(r):
        if r.request.url.startswith(origin + "/"):
            r.continue_()
        else:
            refused.append(r.request.url)
            r.abort()

    try:
        with browser.browser_page() as page:
            page.context.route("**/*", route)
            page.goto(f"{origin}/{viewer.page}")
            deadline, drawn, notice = time.time() + 60, 0, ""
            while time.time() < deadline and not drawn and not notice:
                page.wait_for_timeout(300)
                drawn = page.locator("#canvas g.node").count()
                shown = page.locator("#message-text")
                notice = shown.inner_text() if shown.count() and shown.is_visible() else ""
            assert notice == "", notice  # before: "This app uses cookies to report errors…", the graph waiting
            assert drawn >= 3, page.locator("body").inner_text()[:300]  # Conv, Relu, GlobalAveragePool (+ x, y)
            page.wait_for_timeout(1000)  # anything netron would send after drawing
            assert refused == []  # before: https://ipinfo.io/json on the way to the notice
            assert page.context.cookies() == []
    finally:
        server.shutdown()
        server.server_close()
        staging.close()


def test_cli_export_writes_the_file_and_prints_the_diff(tmp_path, capsys):
    out = tmp_path / "exports" / "test_resnet.pt"
    rc = cli.main(["export", "--model", "test_resnet", "--weights", "random", "--format", "torchscript",
                   "--img-size", "64", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0 and out.is_file()
    assert re.search(r"max abs diff \S+ vs PyTorch over 2 random inputs", captured.out)
    assert "at 64x64" in captured.out and str(out) in captured.out
    assert "warning: FutureWarning: `torch.jit.trace` is deprecated" in captured.err


def test_cli_export_of_a_run_folder(tmp_path, capsys):
    model, info = models.create_model("test_convnext", num_classes=3, weights_choice="random")
    plan = freezing.preset(model, "head")[0]
    freezing.apply(model, plan)
    config = {"model": "test_convnext", "head_kind": "linear", "plans": [plan.to_dict()],
              "data_config": info.data_config.with_size(64).to_dict()}
    runs.save(tmp_path / "run", model, config, [], ["a", "b", "c"])
    out = tmp_path / "run.pt2"
    assert cli.main(["export", "--run", str(tmp_path / "run"), "--format", "pt2", "--out", str(out)]) == 0
    assert out.is_file() and torch.export.load(str(out)).module()(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_cli_export_bad_model_is_one_line_and_exit_2(tmp_path, capsys):
    rc = cli.main(["export", "--model", "no_such_net", "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("vislab: error: unknown model 'no_such_net'") and err.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "pt2"])
def test_class_names_and_preprocessing_travel_inside_the_file(fmt, tmp_path):
    import json

    model, info = models.create_model("test_resnet", 3, weights_choice="random")
    cfg = info.data_config.with_size(64)
    meta = export.metadata("test_resnet", ["cat", "dog", "10"], cfg)
    result = export.export_model(model, cfg.input_size, tmp_path / f"m{export.SUFFIX[fmt]}", fmt, meta=meta)
    assert result.ok, result.reason
    if fmt == "torchscript":
        extra = {"vislab.classes": "", "vislab.preprocessing": ""}
        torch.jit.load(str(result.path), _extra_files=extra)
    elif fmt == "pt2":
        extra = {"vislab.classes": "", "vislab.preprocessing": ""}
        torch.export.load(str(result.path), extra_files=extra)
    else:
        import onnx

        extra = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(extra["vislab.classes"]) == ["cat", "dog", "10"]
    assert json.loads(extra["vislab.preprocessing"])["input_size"][-1] == 64


# ----------------------------------------------------------------------------------------------- reuse (issue 22)

def _counting(monkeypatch) -> list:
    """Replace export.export_model by a spy that records each call and runs the real one."""
    calls, real = [], export.export_model

    def spy(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("fmt"))
        return real(*args, **kwargs)

    monkeypatch.setattr(export, "export_model", spy)
    return calls


def test_model_digest_names_the_weights_and_notices_any_change():
    import copy

    model = _model("test_resnet")
    first = export.model_digest(model)
    assert export.model_digest(model) == first  # the second call only compares the fingerprint
    twin = copy.deepcopy(model)
    assert export.model_digest(twin) == first  # the same weights in another object
    with torch.no_grad():
        twin.fc.bias[0] += 1e-3  # in place, as an optimizer step writes
    assert export.model_digest(twin) != first
    twin.load_state_dict(model.state_dict())  # copied back: the same weights again
    assert export.model_digest(twin) == first
    other = _model("test_resnet")
    other.fc = nn.Linear(other.fc.in_features, 3)  # a new head: other names' shapes
    assert export.model_digest(other) != first
    buffers = copy.deepcopy(model)
    next(m for m in buffers.modules() if isinstance(m, nn.BatchNorm2d)).running_mean.fill_(0.5)
    assert export.model_digest(buffers) != first  # BatchNorm statistics are part of the file


def test_an_unchanged_model_is_exported_and_checked_once(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    exports = export.Exports()
    model = _model("test_resnet")
    first = exports.export(model, (3, 64, 64), tmp_path / "m.pt", "torchscript")
    assert first.ok and first.verified and not first.reused and calls == ["torchscript"]
    again = exports.export(model, (3, 64, 64), tmp_path / "m.pt", "torchscript")
    assert again.reused and again.path == first.path and again.max_abs_diff == first.max_abs_diff
    assert calls == ["torchscript"]  # before: every press exported and checked again
    assert exports.get(first.key) is not None
    exports.export(model, (3, 64, 64), tmp_path / "m.pt2", "pt2")  # another format: its own export
    assert calls == ["torchscript", "pt2"]
    with torch.no_grad():
        model.fc.weight.mul_(2)  # the model changed: its old file is not offered for it
    changed = exports.export(model, (3, 64, 64), tmp_path / "m.pt", "torchscript")
    assert not changed.reused and changed.key != first.key and len(calls) == 3
    assert exports.get(first.key) is None  # its file was replaced by the new export
    changed.path.unlink()  # deleted by hand: exported again, not offered from memory
    assert exports.get(changed.key) is None
    assert not exports.export(model, (3, 64, 64), tmp_path / "m.pt", "torchscript").reused and len(calls) == 4


def test_a_refused_export_is_not_kept(tmp_path, monkeypatch):
    calls = _counting(monkeypatch)
    exports = export.Exports()
    model = _model("test_resnet")
    for _ in range(2):
        result = exports.export(model, (3, 64, 64), tmp_path / "m.pt", "torchscript", tol=-1.0)
        assert not result.ok and not result.reused
    assert len(calls) == 2  # a refusal is tried again: nothing verified to offer


def test_export_key_follows_what_the_file_depends_on(tmp_path):
    model = _model("test_resnet")
    key = export.export_key(model, (3, 64, 64), tmp_path / "m.pt", "torchscript")
    assert key == export.export_key(model, [3, 64, 64], tmp_path / "m.pt", "torchscript")
    others = [export.export_key(model, (3, 96, 96), tmp_path / "m.pt", "torchscript"),
              export.export_key(model, (3, 64, 64), tmp_path / "n.pt", "torchscript"),
              export.export_key(model, (3, 64, 64), tmp_path / "m.pt", "pt2"),
              export.export_key(model, (3, 64, 64), tmp_path / "m.pt", "torchscript", tol=1e-2),
              export.export_key(model, (3, 64, 64), tmp_path / "m.pt", "torchscript", meta={"a": "b"}),
              export.export_key(model, (3, 64, 64), tmp_path / "m.pt", "torchscript", inputs="2 photos")]
    assert len({key, *others}) == 7


def test_the_export_page_exports_a_model_once_and_every_visit_shows_it(monkeypatch):
    """Two AppTest sessions of one lab: the first exports once (a second press and a revisit reuse the checked
    file), the second sees that file at once. Before: every press exported and checked again, and a second
    session had nothing to show."""
    from streamlit.testing.v1 import AppTest

    calls = _counting(monkeypatch)
    app = str(Path(__file__).resolve().parents[1] / "app.py")
    at = AppTest.from_file(app, default_timeout=180).run()
    at.switch_page("pages/export.py").run()
    press = lambda: next(b for b in at.button if b.label == "Export and verify").click().run()  # noqa: E731
    press()
    assert not at.exception and calls == ["torchscript"]
    shown = at.session_state["export_result"]
    assert shown.ok and shown.verified and not shown.reused
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/export.py").run()
    assert not at.exception and len(calls) == 1 and at.get("iframe")
    press()
    assert not at.exception and len(calls) == 1  # nothing changed: not exported again
    assert at.session_state["export_result"].reused and at.session_state["export_result"].path == shown.path
    assert any("has not changed since this file was exported" in c.value for c in at.caption)

    other = AppTest.from_file(app, default_timeout=180)
    other.query_params["lab"] = at.session_state["lab_id"]  # the same lab link in a second tab
    other.run()
    other.switch_page("pages/export.py").run()
    assert not other.exception and len(calls) == 1
    assert any(shown.path.name in s.value for s in other.success)  # offered without pressing anything
    assert other.get("iframe") and other.get("download_button")
