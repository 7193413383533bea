"""A shared run, the path a browser takes (AppTest on app.py): the owner's Share / Revoke under a finished run
on the Train page, and the page a link `?share=<token>` opens for anyone: that run's results and nothing of its
lab (not its id, name, other runs or data), no lab opened or created for it, no page to switch to, no button;
a forged, malformed or revoked link gets a message and a way to a lab of one's own, nothing else."""

from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from pages import _shared, _sidebar
from pages._results import pct
from tests.test_app import _zip_of
from tests.test_walk import _use_model, _use_zip
from vislab.serving import labs, shares

APP = Path(__file__).resolve().parents[1] / "app.py"
RUN = "20260101-000000_test_resnet_head"
OTHER = "20260102-111111_secret_other_run"
KILLED = "20260103-222222_killed_midway"
OWNER_NAME = "Ada Quillfeather"
_TRAINED: dict[str, Path] = {}  # one real run for the whole module (training costs seconds; copies are cheap)


def _trained(synthetic, tmp_path_factory) -> Path:
    if "run" not in _TRAINED:
        from vislab.data.folders import scan_folder
        from vislab.training import experiment
        from vislab.training.loop import TrainConfig

        spec = experiment.Spec(model="test_resnet", strategy="head", weights="auto", img_size=64,
                               train=TrainConfig(epochs=2, batch_size=8, device="cpu"))
        out = tmp_path_factory.mktemp("trained") / "run"
        _TRAINED["run"] = experiment.train(spec, scan_folder(synthetic), out, predictions=True).run_dir
    return _TRAINED["run"]


def _app(**params) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at.run()


@pytest.fixture
def owner(synthetic, tmp_path_factory):
    """An owner's lab as the app makes it (a name, a model, an uploaded zip), with two finished runs and one
    killed mid-run (only its checkpoint); returns (the owner's AppTest, the lab)."""
    from vislab.serving import jobs
    from vislab.training import runs

    trained = _trained(synthetic, tmp_path_factory)
    at = _app()
    _use_model(at, "test_resnet")
    _use_zip(at, _zip_of(synthetic))
    at.text_input(key=_sidebar.NAME_BOX).set_value(OWNER_NAME).run()
    lab = labs.Lab(at.session_state["lab_id"])
    assert lab.read_state()["lab_name"] == OWNER_NAME
    for name in (RUN, OTHER):
        shutil.copytree(trained, lab.runs_dir / name)
    killed = jobs.create(lab.runs_dir / KILLED, "train", {"spec": {"model": "test_resnet"}}, lab=lab.id)
    shutil.copytree(trained, killed.folder / runs.CHECKPOINT)  # its best epoch so far; no final weights
    killed.write_status(state="interrupted", message="the worker process ended before the run finished")
    return at, lab


def _page_text(at) -> str:
    """Everything the page holds: every element's and block's message, main area and sidebar, as text."""
    out = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            out.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)
    walk(at._tree)
    return "\n".join(out)


def _secrets_of(lab: labs.Lab) -> list[str]:
    """What a share link must never show of its lab: its id, its name, its other runs, where its data is."""
    ds = json.loads((lab.folder / "state.json").read_text())["dataset"]
    return [lab.id, lab.id[:8], OWNER_NAME, OTHER, KILLED, str(lab.folder), str(lab.data_dir),
            *[str(v) for v in ds.values() if isinstance(v, str) and "/" in v]]


def _element_types(at) -> set[str]:
    return {e.type for e in at.main} - {"main"}


def _lab_ids() -> set[str]:
    return {p.name for p in labs.labs_dir().iterdir()}


def test_a_share_link_shows_the_run_and_nothing_of_its_lab(owner, synthetic):
    _, lab = owner
    token = shares.create(lab, RUN)
    before = _lab_ids()
    at = _app(share=token)
    assert not at.exception, at.exception
    assert at.title[0].value == "Shared run"
    best = max(m["val_acc"] for m in json.loads((lab.runs_dir / RUN / "metrics.json").read_text()))
    assert any(m.value == f"### Best validation accuracy {pct(best)}" for m in at.markdown)
    titles = [json.loads(c.proto.spec)["layout"].get("title", {}).get("text", "") for c in at.get("plotly_chart")]
    assert "Training curves" in titles and len(titles) == 4, titles  # curves, confusion, per class, Grad-CAM
    assert at.get("image"), "the top losses"
    assert list(at.button) == [] and "button" not in _element_types(at)  # nothing starts or stops anything
    assert [e.label for e in at.get("link_button")] == ["Start your own lab"]
    assert at.sidebar.children == {}  # no lab summary, no name box, no New lab
    text = _page_text(at)
    leaked = [s for s in _secrets_of(lab) + [str(synthetic)] if s in text]
    assert not leaked, leaked
    assert dict(at.query_params) == {"share": token}
    assert "lab_id" not in at.session_state and _lab_ids() == before  # no lab opened or made for the visitor


def test_a_share_link_beside_someone_elses_lab_opens_only_the_run(owner):
    """`?share=` wins: the lab in the same address is not opened (nor its file touched), and leaves the address."""
    _, lab = owner
    token = shares.create(lab, RUN)
    other = labs.create()
    other.write_state({"lab_name": "Bob Otherlab"})
    stamp = other.state_mtime()
    for lab_param in (other.id, lab.id):
        at = _app(share=token, lab=lab_param)
        assert not at.exception, at.exception
        assert any(m.value.startswith("### Best validation accuracy") for m in at.markdown)
        assert dict(at.query_params) == {"share": token}
        assert "lab_id" not in at.session_state and other.state_mtime() == stamp
        text = _page_text(at)
        assert other.id not in text and "Bob Otherlab" not in text and lab.id not in text


def test_a_share_view_has_no_other_page_and_leaving_it_gives_a_fresh_lab(owner):
    owner_at, lab = owner
    token = shares.create(lab, RUN)
    at = _app(share=token)
    with pytest.raises(ValueError, match=r"Known pages: \['Shared run'\]"):  # Train, Data, ...: none is there
        at.switch_page("pages/train.py")
    # the address without the token: the visitor's own new lab, empty, never the owner's
    at.query_params.pop("share")
    at.run()
    mine = at.session_state["lab_id"]
    assert labs.valid_id(mine) and mine != lab.id
    at.switch_page("pages/train.py").run()
    assert not at.exception, at.exception
    assert any("No runs in this lab yet" in c.value for c in at.caption)
    assert RUN not in _page_text(at) and OWNER_NAME not in _page_text(at)
    # the owner's own tab given the link: the lab leaves the session, and comes back only by its own link
    owner_at.query_params["share"] = token
    owner_at.run()
    assert "lab_id" not in owner_at.session_state and dict(owner_at.query_params) == {"share": token}
    assert lab.id not in _page_text(owner_at)


@pytest.mark.parametrize("kind", ["forged", "path", "too long", "revoked"])
def test_a_bad_share_link_gets_a_message_and_nothing_else(owner, kind):
    _, lab = owner
    token = shares.create(lab, RUN)
    if kind == "revoked":
        shares.revoke(lab, RUN)
    bad, message = {"forged": (secrets.token_urlsafe(24), shares.UNKNOWN),
                    "path": ("../../" + lab.id + "/state.json", shares.MALFORMED),
                    "too long": (token * 10, shares.MALFORMED),
                    "revoked": (token, shares.REVOKED)}[kind]
    before = _lab_ids()
    at = _app(share=bad)
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [message]
    assert _element_types(at) == {"title", "error", "link_button"}  # no run content, no button
    assert [e.label for e in at.get("link_button")] == ["Start your own lab"]
    assert at.sidebar.children == {} and "lab_id" not in at.session_state and _lab_ids() == before
    assert lab.id not in _page_text(at) and OWNER_NAME not in _page_text(at)


def _reopen(at, run: str) -> None:
    at.switch_page("pages/train.py").run()
    at.selectbox(key="reopen_pick").set_value(run).run()
    next(b for b in at.button if b.label == "Reopen").click().run()
    assert not at.exception, at.exception


def test_the_owner_shares_a_finished_run_and_revokes_it(owner):
    at, lab = owner
    _reopen(at, KILLED)  # only a checkpoint: nothing to share
    assert not [b for b in at.button if b.label == "Share this run"]
    _reopen(at, RUN)
    share = at.button(key=f"{_shared.SHARE_PREFIX}reopened")
    assert share.label == "Share this run" and not at.code
    share.click().run()
    token = shares.token_of(lab, RUN)
    assert token is not None and shares.resolve(token)[1] == lab.runs_dir / RUN
    assert [c.value for c in at.code] == [f"/?share={token}"]  # AppTest has no browser address: the app's root
    assert any(m.value.startswith(f"**Shared:** `{RUN}`. Anyone with this link") for m in at.markdown)
    # the same run as the lab's last job: its box shows the same link
    at.session_state["last_run"] = RUN
    at.run()
    assert [c.value for c in at.code] == [f"/?share={token}"] * 2
    assert at.button(key=f"{_shared.REVOKE_PREFIX}job").label == "Revoke link"
    # a reload (a fresh session on the lab's link): the same link, not a new one
    again = _app(lab=lab.id)
    again.switch_page("pages/train.py").run()
    assert [c.value for c in again.code] == [f"/?share={token}"] * 2
    # a stranger's first visit (a fresh session, as after a server restart) opens it
    stranger = _app(share=token)
    assert any(m.value.startswith("### Best validation accuracy") for m in stranger.markdown)
    # revoked: the owner's box offers Share again, and the link is refused
    at.button(key=f"{_shared.REVOKE_PREFIX}reopened").click().run()
    assert not at.code and at.button(key=f"{_shared.SHARE_PREFIX}reopened").label == "Share this run"
    assert shares.token_of(lab, RUN) is None
    stranger = _app(share=token)
    assert [e.value for e in stranger.error] == [shares.REVOKED] and not stranger.get("plotly_chart")


def test_a_share_that_fails_says_why(owner):
    """The run's weights vanish between drawing the page and the click: no link, and the page says the run
    cannot be opened."""
    at, lab = owner
    _reopen(at, RUN)
    (lab.runs_dir / RUN / "model.safetensors").rename(lab.runs_dir / RUN / "moved.safetensors")
    at.button(key=f"{_shared.SHARE_PREFIX}reopened").click().run()
    assert not at.exception, at.exception
    assert shares.token_of(lab, RUN) is None and not at.code
    assert any(e.value.startswith(f"Cannot reopen {RUN}") for e in at.error)
    assert not [b for b in at.button if b.label == "Share this run"]
