"""The CAM page's faithfulness scores: the ranking's verdicts on numbers whose verdict is known, and the page
driven through app.py (Compute, Score, a page switch and back, a change of method)."""

import json
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from vislab.views import ranking

APP = Path(__file__).resolve().parents[1] / "app.py"


# ------------------------------------------------------------------------------------------------ the ranking

def test_gap_is_insertion_minus_deletion():
    assert ranking.gap(deletion_auc=0.2, insertion_auc=0.7) == pytest.approx(0.5)


def test_a_method_ahead_on_every_image_by_more_than_the_spread_ranks_first():
    gaps = {"GradCAM": {"a": 0.5, "b": 0.6, "c": 0.7},
            "LayerCAM": {"a": 0.2, "b": 0.3, "c": 0.35},  # behind by 0.30, 0.30, 0.35: mean 0.317, sd 0.029
            ranking.RANDOM: {"a": 0.0, "b": 0.05, "c": -0.05},
            ranking.BLOB: {"a": 0.1, "b": 0.1, "c": 0.1}}
    found = ranking.rank(gaps)
    assert [s.name for s in found.standings] == ["GradCAM", "LayerCAM", ranking.BLOB, ranking.RANDOM]
    top = found.standings[0]
    assert (top.mean, top.std, top.low, top.high, top.images) == pytest.approx((0.6, 0.1, 0.5, 0.7, 3))
    assert [s.baseline for s in found.standings] == [False, False, True, True]
    assert found.sentences == ["GradCAM ranks first on these 3 images: ahead of LayerCAM by 0.32 on average, more "
                               "than the spread of that difference over the images (0.03)."]


def test_methods_whose_difference_is_within_its_spread_are_within_noise():
    gaps = {"GradCAM": {"a": 0.5, "b": 0.2, "c": 0.4},  # mean 0.367
            "LayerCAM": {"a": 0.3, "b": 0.4, "c": 0.45},  # mean 0.383: ahead by -0.2, +0.2, +0.05 (sd 0.2)
            "EigenCAM": {"a": -0.5, "b": -0.6, "c": -0.4},  # far behind: decided
            ranking.RANDOM: {"a": -0.9, "b": -0.95, "c": -0.9}}
    found = ranking.rank(gaps)
    assert found.sentences == ["LayerCAM and GradCAM are within noise of each other on these 3 images: "
                               "the ranking is not decided."]


def test_a_method_that_does_not_beat_the_random_map_is_named():
    gaps = {"GradCAM": {"a": 0.6, "b": 0.7}, "EigenCAM": {"a": 0.1, "b": 0.1},
            ranking.RANDOM: {"a": 0.2, "b": 0.3}}
    found = ranking.rank(gaps)
    assert found.sentences[1] == ("EigenCAM does not beat the random map on these 2 images "
                                  "(the random map: 0.25 insertion − deletion).")
    assert len(found.sentences) == 2


def test_a_method_ahead_of_the_random_map_only_within_noise_is_named():
    gaps = {"XGradCAM": {"a": 0.3, "b": 0.1}, ranking.RANDOM: {"a": 0.0, "b": 0.2}}  # +0.3, -0.1: sd 0.28
    assert ranking.rank(gaps).sentences == ["XGradCAM is the only method scored (0.20 insertion − deletion on "
                                            "these 2 images).", "XGradCAM beats the random map only within noise."]


def test_a_blob_as_good_as_the_best_method_is_said_plainly():
    gaps = {"GradCAM": {"a": 0.4, "b": 0.46}, ranking.BLOB: {"a": 0.5, "b": 0.5}}
    assert ranking.rank(gaps).sentences[-1] == ("The centred blob scores as well as the best method (0.50 vs 0.43): "
                                                "on these images the maps say no more than \"the object is in the "
                                                "middle\".")


def test_one_image_crowns_no_winner():
    gaps = {"GradCAM": {"a": 0.4}, "LayerCAM": {"a": 0.3}, ranking.RANDOM: {"a": 0.0}}
    found = ranking.rank(gaps)
    assert found.sentences == ["GradCAM ranks first on this one image (0.40 insertion − deletion, LayerCAM 0.30); "
                               "one image has no spread, so this ranking may be noise: score more images before "
                               "calling a winner."]


# ------------------------------------------------------------------------------------------------ the page

def _click(at, label):
    next(b for b in at.button if b.label == label).click().run()


def _panel_titles(at) -> list[str]:
    return [a["text"] for el in at.get("plotly_chart")
            for a in json.loads(el.proto.spec).get("layout", {}).get("annotations", [])]


def test_the_cam_page_scores_its_maps_keeps_them_and_drops_them_with_the_inputs():
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value("test_resnet").run()  # 0.1 M parameters at 160 px: seconds, not minutes
    at.switch_page("pages/cam.py").run()
    at.multiselect(key="cam_methods").set_value(["GradCAM", "LayerCAM"]).run()
    at.multiselect(key="cam_photos").set_value(["cat", "coffee"]).run()
    assert not any(b.label == "Score these maps" for b in at.button)  # nothing to score before Compute
    _click(at, "Compute")
    assert not at.exception and not at.error
    assert any("8 maps to score" in c.value for c in at.caption)  # (2 methods + 2 baselines) x 2 images
    assert any("20 steps" in c.value and "blurred copy" in c.value and "160 × 160" in c.value for c in at.caption)
    assert not at.dataframe  # on demand only
    _click(at, "Score these maps")
    assert not at.exception and not at.error
    assert not at.get("progress") and "cam_score_stop" not in [b.key for b in at.button]  # done: gone
    table, standings = at.dataframe[0].value, at.dataframe[1].value
    assert len(table) == 8
    assert sorted(zip(table["method"], table["image"])) == sorted(
        (m, i) for m in ("GradCAM", "LayerCAM", ranking.RANDOM, ranking.BLOB) for i in ("cat", "coffee"))
    for col in ("deletion AUC", "insertion AUC"):
        assert table[col].between(0, 1).all()
    panel_classes = {t.split("<br>")[1].split(" · ")[0] for t in _panel_titles(at)}  # each panel's class
    assert set(table["class"]) <= {c for c in panel_classes} and len(set(table["class"])) >= 1
    assert sorted(standings["method"]) == sorted(["GradCAM", "LayerCAM", ranking.RANDOM, ranking.BLOB])
    first = standings[standings["kind"] == "method"].iloc[0]["method"]
    verdict = at.info[0].value
    assert verdict.startswith(first) and ("ranks first" in verdict or "within noise" in verdict)
    seconds = float(re.search(r"Scored 8 maps in ([\d.]+) s", " ".join(c.value for c in at.caption)).group(1))

    at.switch_page("pages/home.py").run()
    at.switch_page("pages/cam.py").run()  # back: the same scores, not computed again
    assert not at.exception
    assert at.dataframe[0].value.equals(table) and at.info[0].value == verdict
    assert f"Scored 8 maps in {seconds:.1f} s" in " ".join(c.value for c in at.caption)

    at.multiselect(key="cam_methods").set_value(["GradCAM"]).run()  # another request: old panels and scores go
    assert not at.exception and not at.dataframe and not at.info
    from pages._scores import CAM_SCORES

    assert CAM_SCORES not in at.session_state and not any(b.label == "Score these maps" for b in at.button)


def test_the_scores_explain_the_class_the_panels_explain():
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value("test_resnet").run()
    at.switch_page("pages/cam.py").run()
    at.multiselect(key="cam_methods").set_value(["GradCAM"]).run()
    at.radio(key="cam_target_mode").set_value("a class by name").run()
    pick = at.selectbox(key="cam_class").options[7]
    at.selectbox(key="cam_class").set_value(pick).run()
    at.toggle(key="cam_road").set_value(True).run()
    _click(at, "Compute")
    titles = [t for t in _panel_titles(at) if "ROAD" in t]
    assert len(titles) == 1 and pick in titles[0]
    _click(at, "Score these maps")
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table["class"]) == {pick}
    assert table["ROAD"].notna().all() and len(table) == 3  # GradCAM's, and the baselines' too
    panel_road = float(re.search(r"ROAD ([+-][\d.]+)", titles[0]).group(1))
    assert table.loc[table["method"] == "GradCAM", "ROAD"].item() == pytest.approx(panel_road, abs=6e-4)
    assert any("ROAD: grad-cam's remove-and-debias score" in c.value for c in at.caption)


def test_the_sanity_check_draws_a_strip_per_method_with_its_sentence_and_keeps_it():
    from vislab.models.factory import create_model
    from vislab.views import sanity

    from pages._sanity import STRIP_PANELS

    steps = len(sanity.plan(create_model("test_resnet")[0])) + 1  # the original, then one per stage
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.switch_page("pages/model.py").run()
    at.selectbox[0].set_value("other timm / torchvision name…").run()
    at.text_input[0].set_value("test_resnet").run()
    at.switch_page("pages/cam.py").run()
    at.multiselect(key="cam_methods").set_value(["GradCAM", "LayerCAM"]).run()
    _click(at, "Compute")
    _click(at, "Sanity check: randomise the model layer by layer")
    assert not at.exception and not at.error
    assert not at.get("progress") and "cam_sanity_stop" not in [b.key for b in at.button]  # done: gone
    strips = [json.loads(el.proto.spec) for el in at.get("plotly_chart")][-2:]  # one per method (one image)
    for spec in strips:
        titles = [a["text"] for a in spec["layout"]["annotations"]]
        assert titles[0] == "original" and len(titles) == min(steps, STRIP_PANELS)
        assert all(re.search(r"^\d+: \+\S+<br>(rho -?\d\.\d\d|flat map)<br>SSIM -?\d\.\d\d$", t) for t in titles[1:])
    if steps > STRIP_PANELS:  # every step's numbers, folded under each strip
        tables = [e for e in at.expander if e.label.startswith(f"Every step ({steps})")]
        assert len(tables) == 2 and all(len(t.dataframe[0].value) == steps for t in tables)
    sentences = [i.value for i in list(at.info) + list(at.warning)]
    for method in ("GradCAM", "LayerCAM"):
        assert any(f"{method}'s map" in s for s in sentences)
    at.switch_page("pages/home.py").run()
    at.switch_page("pages/cam.py").run()
    assert [i.value for i in list(at.info) + list(at.warning)] == sentences
    assert [json.loads(el.proto.spec) for el in at.get("plotly_chart")][-2:] == strips


def test_a_deep_models_strip_draws_the_original_the_head_the_last_and_steps_between():
    from pages._sanity import STRIP_PANELS, strip_steps

    assert strip_steps(4) == [0, 1, 2, 3]  # a shallow model: every step
    for n in (7, 12, 21, 60):
        picked = strip_steps(n)
        assert len(picked) == STRIP_PANELS and picked == sorted(set(picked))
        assert picked[:2] == [0, 1] and picked[-1] == n - 1  # the original, the head alone, every layer
        gaps = [b - a for a, b in zip(picked[1:], picked[2:])]
        assert max(gaps) - min(gaps) <= 1 + n // 20  # spread evenly, not bunched at one end
