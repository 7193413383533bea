"""Labs on disk: unguessable ids, refused links, damaged files, clean-up by age, and the app reading a lab back."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from vislab import _fileio as fileio, _paths as paths
from vislab.serving import labs

APP = Path(__file__).resolve().parents[1] / "app.py"


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def test_a_new_lab_has_an_unguessable_id_and_its_own_folder():
    made = [labs.create() for _ in range(20)]
    ids = [lab.id for lab in made]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) and labs.valid_id(i) for i in ids)  # 128 bits of lowercase hex
    assert len(set(ids)) == len(ids)
    assert all(len({i[k] for i in ids}) > 1 for k in range(32))  # every digit varies: no counter, no clock
    a = made[0]
    assert a.folder.parent == labs.labs_dir() and a.folder.is_dir() and a.exists()
    assert labs.open_lab(a.id) == a


@pytest.mark.parametrize("bad", ["../../etc", "..", "a" * 33, "A" * 32, "0" * 31 + "/", "0" * 300, "",
                                 "0" * 31 + "\x00", " " + "0" * 31, 42, None])
def test_a_forged_lab_id_is_refused_before_any_path_is_built(bad, vislab_home):
    before = _files_under(vislab_home)
    with pytest.raises(labs.LabError, match="malformed"):
        labs.open_lab(bad)
    with pytest.raises(labs.LabError):
        labs.Lab(bad)
    assert _files_under(vislab_home) == before  # nothing read or written


def test_an_unknown_lab_is_refused_and_not_created(vislab_home):
    with pytest.raises(labs.LabError, match="no lab with this link"):
        labs.open_lab("0" * 32)
    assert not (labs.labs_dir() / ("0" * 32)).exists()


def test_damaged_settings_are_refused_with_a_message():
    lab = labs.create()
    (lab.folder / "state.json").write_text("{not json")
    with pytest.raises(labs.LabError, match="damaged"):
        labs.open_lab(lab.id)
    (lab.folder / "state.json").write_text("[1, 2]")
    with pytest.raises(labs.LabError, match="not a JSON object"):
        lab.read_state()


def test_state_is_written_atomically_and_read_back():
    lab = labs.create()
    lab.write_state({"model_name": "resnet18", "plan": {"trainable": {"head": True}}})
    assert lab.read_state()["model_name"] == "resnet18"
    assert not [p for p in lab.folder.iterdir() if p.name.endswith(".tmp")]  # no temporary left over


def test_old_labs_are_removed_by_age_and_nothing_else(monkeypatch):
    old, fresh, busy = labs.create(), labs.create(), labs.create()
    stranger = labs.labs_dir() / "not-a-lab"
    stranger.mkdir()
    week = time.time() - 8 * 86400
    for lab in (old, busy):
        os.utime(lab.folder / "state.json", (week, week))
    monkeypatch.setenv("VISLAB_LAB_DAYS", "7")
    removed = labs.clean_old(keep={busy.id})
    assert removed == [old.id]
    assert not old.folder.exists() and fresh.folder.exists() and busy.folder.exists() and stranger.exists()
    monkeypatch.setenv("VISLAB_LAB_DAYS", "0")  # 0 turns clean-up off
    os.utime(fresh.folder / "state.json", (week, week))
    assert labs.clean_old() == [] and fresh.folder.exists()


def _app(query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=120)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def test_the_first_visit_creates_a_lab_and_puts_it_in_the_url():
    at = _app()
    lab_id = at.session_state["lab_id"]
    assert labs.valid_id(lab_id) and at.query_params["lab"] in (lab_id, [lab_id])
    assert labs.Lab(lab_id).exists()


def test_a_reopened_link_shows_the_same_choices_in_a_new_session(synthetic):
    at = _app()
    at.switch_page("pages/freeze.py").run()
    at.selectbox(key="preset_choice").set_value("partial").run()
    next(x for x in at.button if x.label == "Apply preset").click().run()
    at.switch_page("pages/data.py").run()
    at.radio(key="data_source").set_value("Bundled textile sample").run()
    next(b for b in at.button if b.label == "Use the sample").click().run()
    lab_id = at.session_state["lab_id"]
    plan = at.session_state["plan"].to_dict()
    # a reload, a second tab or the same link after a restart: a new session with only the link
    again = _app({"lab": lab_id})
    again.switch_page("pages/freeze.py").run()
    assert not again.exception
    assert again.session_state["lab_id"] == lab_id and again.session_state["strategy"] == "partial"
    assert again.session_state["plan"].to_dict() == plan
    assert again.session_state["dataset"].label == at.session_state["dataset"].label
    assert len(again.session_state["dataset"].report.items) == len(at.session_state["dataset"].report.items)
    other = _app()  # no link: a lab of its own, none of the above
    assert other.session_state["lab_id"] != lab_id and "dataset" not in other.session_state


@pytest.mark.parametrize("bad", ["../" * 4 + "etc", "f" * 200, "G" * 32, "0" * 32])
def test_a_bad_link_gives_a_message_and_offers_a_fresh_lab(bad, vislab_home):
    before = _files_under(vislab_home / "labs")
    at = _app({"lab": bad})
    assert not at.exception
    assert at.error and "cannot be opened" in at.error[0].value
    assert _files_under(vislab_home / "labs") == before  # nothing read or written for it
    next(b for b in at.button if b.label == "Start a new lab").click().run()
    assert labs.valid_id(at.session_state["lab_id"]) and at.query_params["lab"] in (at.session_state["lab_id"], [at.session_state["lab_id"]])
    assert not at.error


def test_a_lab_with_damaged_settings_gives_a_message(vislab_home):
    lab = labs.create()
    (lab.folder / "state.json").write_text('{"model_name": ')
    at = _app({"lab": lab.id})
    assert not at.exception and "damaged" in at.error[0].value
    assert (lab.folder / "state.json").read_text() == '{"model_name": '  # left as it was, for a look


def test_a_dataset_that_is_gone_is_asked_for_again(synthetic, tmp_path):
    import shutil

    from vislab.data import folders as data

    copy = tmp_path / "gone"
    shutil.copytree(synthetic, copy)
    lab = labs.create()
    lab.write_dataset(data.report_to_dict(data.scan_folder(copy)))
    lab.write_state({"dataset": {"label": "my folder", "val_frac": 0.2, "seed": 0, "per_class": None}})
    shutil.rmtree(copy)
    at = _app({"lab": lab.id})
    at.switch_page("pages/train.py").run()
    assert not at.exception and "dataset" not in at.session_state
    assert any("no longer on this server" in w.value for w in at.warning)


def test_everything_a_session_writes_stays_in_its_lab(synthetic, vislab_home):
    at = _app()
    at.switch_page("pages/data.py").run()
    at.radio(key="data_source").set_value("Images per class").run()
    png = next(synthetic.rglob("*.png")).read_bytes()
    for i in range(2):
        at.get("file_uploader")[i].set_value([(f"x{j}.png", png, "image/png") for j in range(3)]).run()
    next(b for b in at.button if b.label == "Build the dataset").click().run()
    lab = labs.Lab(at.session_state["lab_id"])
    root = Path(at.session_state["dataset"].report.root)
    assert lab.inside(root) and root.is_dir()
    written = {p for p in _files_under(vislab_home) if p.is_file() and not p.is_relative_to(vislab_home / "weights")
               and not p.is_relative_to(vislab_home / "hub")}
    assert written and all(lab.inside(p) for p in written), [p for p in written if not lab.inside(p)]
    assert json.loads((lab.folder / "state.json").read_text())["dataset"]["label"].startswith("uploads")
    assert str(paths.home()) == str(vislab_home)


def test_a_file_lock_keeps_two_processes_read_modify_writes_whole(tmp_path):
    counter = tmp_path / "counter.json"
    fileio.write_json(counter, {"n": 0})
    code = ("import sys, time; from vislab import _fileio as fileio\n"
            "for _ in range(40):\n"
            "    with fileio.lock(sys.argv[1]):\n"
            "        n = fileio.read_json(sys.argv[1])['n']; time.sleep(0.002)\n"
            "        fileio.write_json(sys.argv[1], {'n': n + 1})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(counter)]) for _ in range(2)]
    assert [p.wait(60) for p in procs] == [0, 0]
    assert fileio.read_json(counter)["n"] == 80  # no update lost between the two "servers"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]



def test_a_name_is_kept_as_plain_text_on_one_line_and_cut_to_its_limit():
    assert labs.clean_name("  Ada \t Lovelace\n") == "Ada Lovelace"  # any whitespace: one space, ends stripped
    assert labs.clean_name("a\x1b[31mred\x00\x7f b\u200b\u202ec") == "a[31mred bc"  # escapes, NUL, DEL, zero-width
    assert labs.clean_name("line\r\nbreak\u2028sep") == "line break sep"  # and direction marks are dropped
    assert labs.clean_name("x" * 100) == "x" * labs.NAME_LIMIT == labs.clean_name("x" * 100, limit=None)[:40]
    assert labs.clean_name("a" * 39 + " bcd") == "a" * 39  # cut, never ending on a space
    assert labs.clean_name("Zoë 李 🙂") == "Zoë 李 🙂"  # any script, as typed
    assert labs.clean_name("**x** <b>y</b> [z](u)") == "**x** <b>y</b> [z](u)"  # markup is kept as text...
    assert all(labs.clean_name(v) == "" for v in ("", "  \n\t ", "\x00\x1b", None, 42, ["Ann"]))  # no name


def test_a_name_is_shown_as_typed_never_as_markdown_or_html():
    shown = labs.name_markdown("**x** <b>y</b> [z](u) $1$ :red[w] a_b `c` \\")
    assert shown == r"\*\*x\*\* \<b\>y\<\/b\> \[z\]\(u\) \$1\$ \:red\[w\] a\_b \`c\` \\"  # ... escaped to show
    assert labs.name_markdown("Zoë Ada 42") == "Zoë Ada 42"  # letters, digits and spaces as they are
    assert re.sub(r"\\(.)", r"\1", shown) == "**x** <b>y</b> [z](u) $1$ :red[w] a_b `c` \\"  # nothing lost
