"""The Compare page shows a saved comparison (issue 22): shared caching pass apart, differences within noise
said so, and a revisit recomputes nothing that did not change (no model loaded, no Grad-CAM, no forward)."""

import json
import os
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


def _titles(at) -> list[str]:
    return [json.loads(el.proto.spec).get("layout", {}).get("title", {}).get("text", "")
            for el in at.get("plotly_chart")]


@pytest.fixture
def counted(monkeypatch):
    """Calls of the work behind the page's views: loading a run's model, Grad-CAM, a layer's maps, and
    building the figures of the CAM panels, the feature maps and the confusion matrices."""
    from vislab.views import cam, features
    from vislab.figures import charts as plots
    from vislab.training import runs

    calls = {"runs.load": 0, "cam.run": 0, "features.activations": 0, "cam_panels": 0, "map_grid": 0,
             "confusion_matrix": 0}

    def count(module, name, key):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            calls[key] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, wrapper)

    count(runs, "load", "runs.load")
    count(cam, "run", "cam.run")
    count(features, "activations", "features.activations")
    for name in ("cam_panels", "map_grid", "confusion_matrix"):
        count(plots, name, name)
    return calls


def test_a_revisit_of_a_saved_comparison_recomputes_nothing(synthetic, counted):
    from pages import _jobs
    from vislab.training import compare
    from vislab.data import folders as data
    from vislab.serving import labs

    at = AppTest.from_file(str(APP), default_timeout=120).run()
    lab = labs.Lab(at.session_state["lab_id"])
    configs = [compare.Config("head a", "head", lr=1e-3), compare.Config("head b", "head", lr=1e-2),
               compare.Config("full", "full")]
    rows = compare.run("test_resnet", data.scan_folder(synthetic), configs, 1, lab.runs_dir / "cmp", img_size=64,
                       batch_size=8)
    at.session_state["compare_shown"] = "cmp"
    for k in counted:
        counted[k] = 0
    at.switch_page("pages/compare.py").run()
    assert not at.exception and not at.error
    titles = _titles(at)
    assert any(t.startswith("Grad-CAM at") for t in titles)
    assert any(t.endswith("the same 6 channels under each run") for t in titles)
    text = " ".join(m.value for m in at.markdown)
    assert "shared caching pass #1" in text and "used by head a, head b" in text
    assert "validation images (one image is" in text and "kept weights" in text
    table = at.dataframe[0].value
    assert list(table["caching pass"]) == ["#1", "#1", "none"]
    assert counted == {"runs.load": 3, "cam.run": 3, "features.activations": 3,  # the first visit: once per run
                       "cam_panels": 1, "map_grid": 1, "confusion_matrix": 3}
    nothing = dict.fromkeys(counted, 0)

    for k in counted:
        counted[k] = 0
    at.switch_page("pages/home.py").run()
    _jobs._load_run.clear()  # other users' runs pushed the loaded models out of the server's resource caches
    at.switch_page("pages/compare.py").run()
    assert not at.exception and _titles(at) == titles
    assert counted == nothing

    other = AppTest.from_file(str(APP), default_timeout=120)  # a second tab / a reload of the lab's link
    other.query_params["lab"] = lab.id
    other.run()
    other.switch_page("pages/compare.py").run()
    assert not other.exception and _titles(other) == titles
    assert counted == nothing

    layers = at.selectbox(key="cmp_layer").options
    at.selectbox(key="cmp_layer").set_value(layers[0]).run()  # another layer: its maps, once per run, no CAM
    assert counted == {**nothing, "runs.load": 3, "features.activations": 3, "map_grid": 1}

    for k in counted:
        counted[k] = 0
    weights = Path(rows[1].run_dir) / "model.safetensors"  # one run's weights changed: that run alone again
    st_ = weights.stat()
    os.utime(weights, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/compare.py").run()
    assert counted == {**nothing, "runs.load": 1, "cam.run": 1, "features.activations": 1, "cam_panels": 1,
                       "map_grid": 1}
