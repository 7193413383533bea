from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "app.py"


def test_home_page_shows_catalog_and_weights_status():
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception
    assert "vislab" in at.title[0].value
    frame = at.dataframe[0].value
    assert "mobilenet_v2" in set(frame["model"])
    assert set(frame["weights"]) - {"none: random init"}  # at least one model with real weights (seeded)
