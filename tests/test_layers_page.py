"""The Layer responses page through AppTest: top patches per stage with their receptive fields, feature
visualisation, and a bad channel number, on a tiny timm model and the bundled photos."""

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


def _layers_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=240).run()
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value("test_resnet").run()
    at.switch_page("pages/layers.py").run()
    assert not at.exception, at.exception
    return at


def _button(at, label):
    return next(b for b in at.button if b.label == label)


def test_top_patches_show_each_stage_with_its_receptive_field_and_a_visualisation_runs():
    at = _layers_page()
    stages = at.multiselect(key="layers_stages")
    picked = [stages.options[0], stages.options[-1]]
    stages.set_value(picked).run()
    at.slider(key="layers_n").set_value(2).run()
    at.slider(key="layers_k").set_value(2).run()
    _button(at, "Find the top patches").click().run()
    assert not at.exception, at.exception
    rows = [m.value for m in at.markdown if "receptive field" in m.value and m.value.startswith("**")]
    assert [r.split("**")[1] for r in rows] == picked  # one row per chosen stage, stem first
    res = at.session_state["layers_out"][1]
    for row, lp in zip(rows, res.layers):  # the page states the field the library computed
        assert f"{lp.field.size[0]}×{lp.field.size[1]} px" in row
    assert res.layers[0].field.size[0] < res.layers[-1].field.size[0]  # later stages see more of the image
    assert len(at.get("image")) >= 2  # patch rows drawn
    at.select_slider(key="layers_vis_size").set_value(64).run()
    at.select_slider(key="layers_vis_steps").set_value(32).run()
    _button(at, "Visualise").click().run()
    assert not at.exception, at.exception
    vis = at.session_state["layers_vis"][1]
    assert vis.image.shape[:2] == (64, 64) and len(vis.objective) == 32


def test_a_channel_number_the_stage_does_not_have_is_a_message_not_a_traceback():
    at = _layers_page()
    at.radio(key="layers_mode").set_value("by number").run()
    at.text_input(key="layers_channels").set_value("0, 99999").run()
    _button(at, "Find the top patches").click().run()
    assert not at.exception, at.exception
    assert any("99999" in e.value or "channel" in e.value for e in at.error), [e.value for e in at.error]
    at.text_input(key="layers_channels").set_value("zero, one").run()
    assert any("is not a list of channel numbers" in e.value for e in at.error)
