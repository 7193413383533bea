"""A class dataset as participants meet it, through app.py: the instructor publishes their lab's dataset, a
participant's Data page offers it beside the sample, the lab uses it in place (no copy), keeps it after a
reload, trains on it, and is told when the instructor unpublishes it. The instructor's controls
(pages/_publish.py) are driven as the Class page draws them."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.test_app import _zip_of
from tests.test_walk import APP, _choose, _train, _use_model, _use_zip
from vislab.data import folders
from vislab.serving import class_data, labs

LINE = "Class dataset: Stripes (3 classes, 24 images)"


def _app(lab_id: str | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    if lab_id:
        at.query_params["lab"] = lab_id
    return at.run()


def _lab(at) -> labs.Lab:
    return labs.Lab(at.session_state["lab_id"])


def _publish(synthetic, title: str = "Stripes") -> class_data.Published:
    """The instructor's lab: the synthetic zip on its Data page, then published (what the button calls)."""
    at = _app()
    _use_zip(at, _zip_of(synthetic))
    return class_data.publish(_lab(at), at.session_state["dataset"].used, title)


def _use_class(at, line: str = LINE) -> None:
    at.switch_page("pages/data.py").run()
    radio = at.radio(key="data_source")
    assert line in radio.options, radio.options
    _choose(radio, line)
    at.run()
    at.button(key="use_class_dataset").click().run()
    assert not at.exception, at.exception


def _sha1s(files) -> set[str]:
    return {hashlib.sha1(p.read_bytes()).hexdigest() for p in files if p.is_file() and not p.is_symlink()}


def _images(entry) -> list[Path]:
    return [p for p in entry.folder.rglob("*") if p.is_file() and p.name != "manifest.json"]


def _no_copies(lab: labs.Lab, entry) -> None:
    """Not one byte-identical copy of a published image anywhere in the lab's folder."""
    shared = _sha1s(_images(entry))
    assert len(shared) == 24
    assert not (_sha1s(lab.folder.rglob("*")) & shared), "a published image was copied into the lab"
    assert not lab.data_dir.exists() or not any(lab.data_dir.iterdir())


def _markdowns(at) -> list[str]:
    return [m.value for m in at.main.get("markdown")]


def test_a_participant_uses_a_class_dataset_in_place_and_keeps_it_after_a_reload(synthetic):
    entry = _publish(synthetic)
    at = _app()  # a participant: a lab of their own
    at.switch_page("pages/data.py").run()
    radio = at.radio(key="data_source")
    assert radio.options[:1] == ["Bundled textile sample"] and LINE in radio.options
    _use_class(at)
    ds = at.session_state["dataset"]
    assert ds.published == entry.digest and ds.source == "class"
    assert Path(ds.report.root) == entry.folder.resolve()
    assert any("Published by the instructor" in m and "class_0: 8, class_1: 8, class_2: 8" in m.replace("\\", "")
               for m in _markdowns(at))
    assert at.subheader[0].value == "Dataset: class dataset Stripes"
    assert any(m.startswith("**24 images, 3 classes**") for m in _markdowns(at))
    assert at.radio(key="data_source").value == LINE
    lab = _lab(at)
    _no_copies(lab, entry)
    kept = json.loads((lab.folder / "state.json").read_text())["dataset"]
    assert kept["published"] == entry.digest and kept["title"] == "Stripes"

    again = _app(lab.id)  # a reload, a second tab, the link after a restart
    again.switch_page("pages/data.py").run()
    assert not again.exception and not [w for w in again.warning if "no longer" in w.value]
    ds = again.session_state["dataset"]
    assert ds.published == entry.digest and len(ds.report.items) == 24
    assert again.radio(key="data_source").value == LINE
    assert any(m.startswith("**24 images, 3 classes**") for m in _markdowns(again))
    assert any("class dataset Stripes" in m.value for m in again.sidebar.get("markdown"))
    _no_copies(lab, entry)


def test_unpublishing_is_said_on_the_participants_next_visit(synthetic):
    entry = _publish(synthetic)
    at = _app()
    _use_class(at)
    lab = _lab(at)
    class_data.unpublish(entry.digest)
    at.switch_page("pages/train.py").run()  # any page: the lab drops it, with a warning
    assert not at.exception
    assert any("no longer published" in w.value and "Stripes" in w.value for w in at.warning)
    assert "dataset" not in at.session_state or at.session_state["dataset"] is None
    at.switch_page("pages/data.py").run()
    assert not at.exception
    assert any("The class dataset Stripes is no longer published" in e.value for e in at.error)
    radio = at.radio(key="data_source")
    assert LINE not in radio.options and radio.value == "Bundled textile sample"
    assert any("No dataset yet" in i.value for i in at.info)
    assert "published" not in json.loads((lab.folder / "state.json").read_text()).get("dataset", {})


def test_a_lab_reopened_after_the_unpublish_is_told_too(synthetic):
    entry = _publish(synthetic)
    at = _app()
    _use_class(at)
    class_data.unpublish(entry.digest)
    again = _app(_lab(at).id)  # the first page after a restart: the saved dataset is not restored
    assert not again.exception
    again.switch_page("pages/data.py").run()
    assert any("The class dataset Stripes is no longer published" in e.value for e in again.error)
    assert "dataset" not in again.session_state or again.session_state["dataset"] is None
    assert "published" not in json.loads((_lab(at).folder / "state.json").read_text()).get("dataset", {})


def test_a_title_with_markdown_and_html_is_shown_as_text(synthetic):
    title = "**Bold** <b>x</b> [link](http://e.x) :red[r]"
    _publish(synthetic, title)
    shown = f"Class dataset: {labs.name_markdown(title)} (3 classes, 24 images)"
    at = _app()
    at.switch_page("pages/data.py").run()
    assert shown in at.radio(key="data_source").options  # drawn escaped: every punctuation mark backslashed
    _use_class(at, shown)
    assert at.subheader[0].value == f"Dataset: class dataset {labs.name_markdown(title)}"
    assert any(f"**{labs.name_markdown(title)}**" in m for m in _markdowns(at))
    assert at.session_state["dataset"].title == title  # kept as typed, escaped only where shown
    kept = json.loads((_lab(at).folder / "state.json").read_text())["dataset"]
    assert kept["label"] == f"class dataset {title}"  # on disk plain: the Class page escapes what it shows


def test_training_on_a_class_dataset_reads_it_in_place(synthetic):
    entry = _publish(synthetic)
    before = {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in _images(entry)}
    at = _app()
    _use_model(at, "test_resnet")
    _use_class(at)
    _train(at)  # 1 epoch at 64 px; asserts the job is done
    lab = _lab(at)
    run = lab.runs_dir / at.session_state["last_run"]
    assert json.loads((run / "config.json").read_text())["data"] == str(entry.folder.resolve())
    split = json.loads((run / "split.json").read_text())  # every image it read lies in the shared folder
    paths = [Path(p[0] if isinstance(p, list) else p) for side in ("train", "val") for p in split[side]]
    assert len(paths) == 24 and all(p.is_relative_to(entry.folder.resolve()) for p in paths)
    _no_copies(lab, entry)
    assert {p: (p.read_bytes(), stat.S_IMODE(p.stat().st_mode)) for p in _images(entry)} == before


def test_the_instructor_controls_publish_list_and_unpublish(synthetic):
    """pages/_publish.py as the Class page draws it after the key check: the lab's dataset, a title, the
    button, the list with Unpublish."""
    lab = labs.create()
    shutil.copytree(synthetic, lab.data_dir / "uploads")
    report_dict = folders.report_to_dict(folders.scan_folder(lab.data_dir / "uploads"))

    def script(lab_id, report_dict):
        import streamlit as st

        from pages import _dataset, _publish
        from vislab.data import folders

        st.session_state.setdefault("lab_id", lab_id)
        st.session_state.setdefault("dataset", _dataset.Dataset(folders.report_from_dict(report_dict), "uploads"))
        _publish.publish_controls()

    at = AppTest.from_function(script, args=(lab.id, report_dict), default_timeout=60).run()
    assert not at.exception
    assert any("24 images" in m.value for m in at.markdown) and any("None yet" in c.value for c in at.caption)
    at.button(key="publish_dataset").click().run()
    assert any("give the dataset a title" in e.value for e in at.error) and class_data.published() == []
    at.text_input(key="publish_title").set_value("Stripes *day 1*").run()
    at.button(key="publish_dataset").click().run()
    (entry,) = class_data.published()
    assert entry.title == "Stripes *day 1*" and any("Published **Stripes \\*day 1\\***" in s.value for s in at.success)
    assert any("**Stripes \\*day 1\\*** · 3 classes, 24 images" in m.value for m in at.markdown)
    at.button(key="publish_dataset").click().run()
    assert any("already published" in i.value for i in at.info) and len(class_data.published()) == 1
    at.button(key=f"unpublish_{entry.digest}").click().run()
    assert class_data.published() == [] and any("Unpublished" in s.value for s in at.success)
    assert not any(b.key == f"unpublish_{entry.digest}" for b in at.button)


def test_the_class_page_publishes_behind_the_instructor_key_only(synthetic, monkeypatch):
    """Through app.py: the Class page, after the key, publishes the instructor's lab's dataset; without the
    key its publish controls are nowhere."""
    monkeypatch.setenv("VISLAB_INSTRUCTOR_KEY", "a-long-workshop-secret")
    at = _app()
    _use_zip(at, _zip_of(synthetic))
    at.switch_page("pages/class.py").run()
    assert not at.exception
    assert not [b for b in at.button if b.key == "publish_dataset"]  # before the key: no publish controls
    at.text_input(key="class_key_input").input("a-long-workshop-secret")
    next(b for b in at.button if b.label == "Open the class").click().run()
    assert not at.exception, at.exception
    at.text_input(key="publish_title").set_value("Stripes").run()
    at.button(key="publish_dataset").click().run()
    (entry,) = class_data.published()
    assert entry.title == "Stripes" and entry.images == 24
    assert any("Published **Stripes**" in s.value for s in at.success)
    participant = _app()
    _use_class(participant)  # the line "Class dataset: Stripes (3 classes, 24 images)" is offered and works
    assert participant.session_state["dataset"].published == entry.digest
