from pathlib import Path

import pytest

from vislab.teaching import advisor
from vislab.models import freezing


@pytest.mark.parametrize("images,size", [
    (0, "tiny"), (1, "tiny"), (240, "tiny"), (999, "tiny"),
    (1_000, "small"), (5_000, "small"), (9_999, "small"),
    (10_000, "medium"), (99_999, "medium"),
    (100_000, "large"), (1_281_167, "large"),  # ImageNet's training set
])
def test_size_bucket_follows_the_course_boundaries(images, size):
    assert advisor.size_bucket(images) == size


@pytest.mark.parametrize("bad", [-1, 2.5, "240", None, True])
def test_size_bucket_refuses_what_is_not_a_count(bad):
    with pytest.raises(ValueError):
        advisor.size_bucket(bad)


def test_every_size_has_a_label_that_names_its_range():
    assert tuple(advisor.SIZE_LABELS) == advisor.SIZES == ("tiny", "small", "medium", "large")
    for size, label in advisor.SIZE_LABELS.items():
        assert label.startswith(f"{size} (")
    # a 240-image dataset: its label, and the label of the size it falls in, say so
    assert advisor.SIZE_LABELS[advisor.size_bucket(240)] == "tiny (< 1k)"


def test_every_pair_has_advice_with_a_real_preset():
    for size in advisor.SIZES:
        for sim in advisor.SIMILARITIES:
            advice = advisor.advise(size, sim)
            assert advice.strategy in freezing.STRATEGIES
            assert advice.title and advice.why.endswith(".")
    with pytest.raises(ValueError):
        advisor.advise("huge", "similar")
    with pytest.raises(ValueError):
        advisor.advise("tiny", "alike")


def test_advice_thaws_more_as_the_dataset_grows():
    """The course: little data -> only the head; in between -> the head and the last stages; a lot of data ->
    everything (two-phase when similar), from scratch when different. Never a step back as size grows."""
    order = {"head": 0, "partial": 1, "two-phase": 2, "full": 2, "scratch": 3}
    for sim in advisor.SIMILARITIES:
        steps = [order[advisor.advise(size, sim).strategy] for size in advisor.SIZES]
        assert steps == sorted(steps), (sim, steps)
    assert advisor.advise("tiny", "similar").strategy == "head"
    assert advisor.advise("tiny", "different").strategy == "head"  # too few images to thaw anything
    assert "more" in advisor.advise("tiny", "different").why  # … and the way out is more data
    assert advisor.advise("medium", "similar").strategy == "partial"  # the course's in-between case
    assert advisor.advise("large", "different").strategy == "scratch"


def test_the_course_matrix_is_unchanged_and_drawn_with_explicit_rows():
    """MATRIX is the 2x2 chart (plots.strategy_matrix draws its rows "small" and "large"); each size is shown
    on a row whose cell gives the same title, or on none (medium lies between the rows)."""
    assert set(advisor.MATRIX) == {(s, sim) for s in ("small", "large") for sim in advisor.SIMILARITIES}
    assert advisor.MATRIX[("small", "similar")].strategy == "head"
    assert advisor.MATRIX[("small", "different")].strategy == "partial"
    assert advisor.MATRIX[("large", "similar")].strategy == "two-phase"
    assert advisor.MATRIX[("large", "different")].strategy == "scratch"
    assert [advisor.chart_row(s) for s in advisor.SIZES] == ["small", "small", None, "large"]
    for size in advisor.SIZES:
        row = advisor.chart_row(size)
        for sim in advisor.SIMILARITIES:
            if row is not None:
                assert advisor.MATRIX[(row, sim)].title == advisor.advise(size, sim).title, (size, sim)
    with pytest.raises(ValueError):
        advisor.chart_row("huge")
    assert [advisor.chart_note(s) is None for s in advisor.SIZES] == [False, True, False, True]


def test_plots_draws_the_matrix_with_the_row_highlighted():
    pytest.importorskip("plotly")
    from vislab.figures import charts as plots

    texts = [a.text for a in plots.strategy_matrix(advisor.chart_row("tiny"), "similar", advisor.MATRIX)
             .layout.annotations]
    assert "<b>Train only the new head</b>" in texts
    medium = plots.strategy_matrix(advisor.chart_row("medium"), "similar", advisor.MATRIX)
    assert all(shape.fillcolor == "#f2f2f2" for shape in medium.layout.shapes)  # no cell claims medium



APP = Path(__file__).resolve().parents[1] / "app.py"


def _dataset(images: int):
    """A dataset of `images` images as the Data page leaves it in the session (pages._dataset.Dataset)."""
    from pages import _dataset
    from vislab.data import folders as data

    report = data.DataReport("/nowhere", ["a", "b"], [(f"/nowhere/{i}.png", i % 2) for i in range(images)])
    return _dataset.Dataset(report, f"test dataset ({images})")


def _dataset_captions(at) -> list[str]:
    return [c.value for c in at.caption if c.value.startswith("Your dataset")]


def test_home_preselects_the_size_of_the_labs_dataset_until_the_person_picks():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=120).run()  # Home first, as every visit starts
    assert not at.exception, at.exception
    assert at.radio(key="adv_size").value == "tiny" and _dataset_captions(at) == []  # no dataset yet
    at.session_state["dataset"] = _dataset(240)  # then the Data page: the radio already has its value
    at.run()
    assert at.radio(key="adv_size").value == "tiny"
    assert _dataset_captions(at) == ["Your dataset: 240 images → tiny"]
    at.session_state["dataset"] = _dataset(20_240)  # another dataset, while the person has not picked
    at.run()
    assert at.radio(key="adv_size").value == "medium"
    assert _dataset_captions(at) == ["Your dataset: 20,240 images → medium"]
    assert [c for c in at.caption if "no row for it" in c.value]  # medium: how the chart shows it
    at.radio(key="adv_size").set_value("large").run()  # the person's own pick stays …
    assert at.radio(key="adv_size").value == "large"
    assert _dataset_captions(at) == ["Your dataset: 20,240 images → medium (you picked large)"]
    at.session_state["dataset"] = _dataset(240)
    at.run()  # … also when the dataset changes
    assert at.radio(key="adv_size").value == "large"
    assert _dataset_captions(at) == ["Your dataset: 240 images → tiny (you picked large)"]
    assert not at.exception, at.exception
