"""A workshop's two lab settings through Streamlit's AppTest: the participant's name and projector mode, each
kept in the lab (a page switch, a new session on the same link) and never carried into another lab."""

import json
from pathlib import Path

from streamlit.testing.v1 import AppTest

from pages import _sidebar
from pages._state import NAME, PROJECTOR
from vislab.figures import charts
from vislab.serving import labs

APP = Path(__file__).resolve().parents[1] / "app.py"


def _app(lab_id: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    if lab_id:
        at.query_params["lab"] = lab_id
    return at.run()


def _saved(at) -> dict:
    return json.loads((labs.Lab(at.session_state["lab_id"]).folder / "state.json").read_text())


def _heading(at) -> str:
    return next(m.value for m in at.sidebar.markdown if m.value.startswith("###"))


def _chart_fonts(at) -> tuple[float, float]:
    """The page's first chart: its layout's font size and its x axis' tick labels."""
    layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
    return layout["font"]["size"], layout["xaxis"]["tickfont"]["size"]


def test_your_name_is_kept_plain_cut_and_shown_escaped():
    at = _app()
    assert _heading(at) == "### Current lab" and at.text_input(key=_sidebar.NAME_BOX).value == ""
    typed = " **Ann** <b>Lee</b>\x1b[0m\t" + "y" * 40
    at.text_input(key=_sidebar.NAME_BOX).set_value(typed).run()
    name = labs.clean_name(typed)
    assert len(name) == labs.NAME_LIMIT and "\x1b" not in name and "\t" not in name
    assert at.session_state[NAME] == name == _saved(at)[NAME] == at.text_input(key=_sidebar.NAME_BOX).value
    assert any(f"Cut to {labs.NAME_LIMIT} characters" in c.value for c in at.sidebar.caption)  # and it says so
    assert _heading(at) == f"### Lab of {labs.name_markdown(name)}"  # markdown and HTML shown as typed
    assert r"\*\*Ann\*\* \<b\>Lee\<\/b\>" in _heading(at)

    at.switch_page("pages/freeze.py").run()
    assert at.text_input(key=_sidebar.NAME_BOX).value == name and not at.exception
    again = _app(at.session_state["lab_id"])  # a new session on the same link: a reload, a second tab
    assert again.text_input(key=_sidebar.NAME_BOX).value == name and _heading(again) == _heading(at)

    other = labs.create()  # the same browser session opens another lab's link: that lab has no name
    at.query_params["lab"] = other.id
    at.run()
    assert at.session_state["lab_id"] == other.id and at.text_input(key=_sidebar.NAME_BOX).value == ""
    assert NAME not in _saved(at) and _heading(at) == "### Current lab"


def test_projector_mode_is_kept_in_the_lab_and_enlarges_every_chart():
    at = _app()
    at.switch_page("pages/model.py").run()
    plain = _chart_fonts(at)
    assert plain == (charts.FONT["size"], charts.TICK_PX) and at.toggle(key=_sidebar.PROJECTOR_TOGGLE).value is False
    assert not any(_sidebar.PROJECTOR_CSS == m.value for m in at.sidebar.markdown)

    at.toggle(key=_sidebar.PROJECTOR_TOGGLE).set_value(True).run()
    big = (charts.FONT["size"] * charts.PROJECTOR_SCALE, charts.TICK_PX * charts.PROJECTOR_SCALE)
    assert _saved(at)[PROJECTOR] is True and _chart_fonts(at) == big
    assert any(_sidebar.PROJECTOR_CSS == m.value for m in at.sidebar.markdown)  # the page's own text, larger

    at.switch_page("pages/home.py").run()  # a page switch: still on
    at.switch_page("pages/model.py").run()
    assert at.toggle(key=_sidebar.PROJECTOR_TOGGLE).value is True and _chart_fonts(at) == big

    again = _app(at.session_state["lab_id"])  # a new session on the same lab link
    again.switch_page("pages/model.py").run()
    assert again.toggle(key=_sidebar.PROJECTOR_TOGGLE).value is True and _chart_fonts(again) == big

    again.toggle(key=_sidebar.PROJECTOR_TOGGLE).set_value(False).run()
    assert _saved(again)[PROJECTOR] is False and _chart_fonts(again) == plain
    fresh = _app()  # a new lab starts without it
    assert fresh.toggle(key=_sidebar.PROJECTOR_TOGGLE).value is False
