"""Shared runs on disk (vislab.serving.shares): unguessable tokens that are not the lab's id, one per run until
revoked, kept in the lab home across restarts, and every way a token can open nothing refused with its reason:
malformed, unknown, revoked, its run or its lab gone, a record no lab confirms."""

import hashlib
import json
import os
import secrets
import subprocess
import sys

import pytest
import torch

from vislab.serving import labs, shares
from vislab.training import runs


def _run(lab: labs.Lab, name: str = "20260101-000000_test_resnet_head"):
    """A finished run folder of `lab`: the four files, the weights last (runs.save)."""
    return runs.save(lab.runs_dir / name, {"w": torch.zeros(2)}, {"model": "tiny"}, [{"epoch": 1, "val_acc": 0.5}],
                     ["a", "b"])


def _files(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_a_token_is_unguessable_not_the_lab_id_and_stable_until_revoked():
    lab = labs.create()
    a, b = _run(lab, "run_a"), _run(lab, "run_b")
    token = shares.create(lab, "run_a")
    assert shares.valid_token(token) and len(token) == 32
    assert lab.id not in token and token not in lab.id and token != shares.create(lab, "run_b")
    assert all(lab.id[i:i + 8] not in token for i in range(25))  # nothing of the lab's id in it
    assert shares.create(lab, "run_a") == token  # sharing twice: the same link
    assert shares.token_of(lab, "run_a") == token and shares.token_of(lab, "run_x") is None
    assert shares.resolve(token) == (lab, a)
    assert shares.resolve(shares.token_of(lab, "run_b"))[1] == b
    # the home's record is named by the token's hash and holds no token: a listing reveals no link
    record = shares.shares_dir() / f"{hashlib.sha256(token.encode()).hexdigest()}.json"
    assert json.loads(record.read_text())["run"] == "run_a"
    listing = " ".join(p.name + p.read_text() for p in shares.shares_dir().iterdir())
    assert token not in listing
    assert json.loads((lab.folder / "shares.json").read_text())["run_a"] == token  # the owner's own view


def test_revoking_kills_the_link_and_sharing_again_makes_a_new_one():
    lab = labs.create()
    _run(lab, "run_a")
    token = shares.create(lab, "run_a")
    assert shares.revoke(lab, "run_a") is True
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(token)
    assert str(err.value) == shares.REVOKED
    assert shares.token_of(lab, "run_a") is None and shares.revoke(lab, "run_a") is False
    again = shares.create(lab, "run_a")
    assert again != token and shares.resolve(again)[1].name == "run_a"
    with pytest.raises(shares.ShareError, match="revoked"):  # the old link stays dead
        shares.resolve(token)


def test_a_token_survives_a_restart(vislab_home):
    """A fresh process reading the same VISLAB_HOME (another server, or this one restarted) opens the link."""
    lab = labs.create()
    folder = _run(lab)
    token = shares.create(lab, folder.name)
    code = "import sys; from vislab.serving import shares; lab, f = shares.resolve(sys.argv[1]); print(lab.id, f)"
    out = subprocess.run([sys.executable, "-c", code, token], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "VISLAB_HOME": str(vislab_home)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [lab.id, str(folder)]


@pytest.mark.parametrize("bad", ["../../etc/passwd", "../" * 11 + "ab", "a" * 31, "a" * 33, "a" * 300, "",
                                 "a" * 31 + "/", "a" * 31 + "\x00", "a" * 31 + ".", " " + "a" * 31,
                                 "a" * 31 + "é", None, 42])
def test_a_malformed_token_is_refused_before_any_path_is_built(bad, vislab_home):
    lab = labs.create()
    _run(lab)
    shares.create(lab, "20260101-000000_test_resnet_head")
    before = _files(vislab_home)
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(bad)
    assert str(err.value) == shares.MALFORMED
    assert _files(vislab_home) == before  # nothing written


def test_a_forged_token_of_the_right_form_is_unknown():
    lab = labs.create()
    _run(lab)
    shares.create(lab, "20260101-000000_test_resnet_head")
    for _ in range(5):
        with pytest.raises(shares.ShareError) as err:
            shares.resolve(secrets.token_urlsafe(24))
        assert str(err.value) == shares.UNKNOWN


def test_a_record_no_lab_confirms_opens_nothing():
    """Both files must agree: a record written by hand for someone's run (a shared disk, a restored backup)
    opens nothing while the lab's own shares.json does not list that token."""
    lab = labs.create()
    _run(lab)
    forged = secrets.token_urlsafe(24)
    record = shares.shares_dir() / f"{hashlib.sha256(forged.encode()).hexdigest()}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"lab": lab.id, "run": "20260101-000000_test_resnet_head", "created": 0}))
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(forged)
    assert str(err.value) == shares.NOT_LIVE
    real = shares.create(lab, "20260101-000000_test_resnet_head")  # the lab lists another token for the run
    with pytest.raises(shares.ShareError, match="no longer opens"):
        shares.resolve(forged)
    assert shares.resolve(real)[0] == lab
    record.write_text(json.dumps({"lab": lab.id, "run": "../../" + lab.id, "created": 0}))  # a path in a record
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(forged)
    assert str(err.value) == shares.UNKNOWN


def test_only_a_finished_run_of_an_existing_lab_is_shared(vislab_home):
    lab = labs.create()
    done = _run(lab, "done")
    killed = lab.runs_dir / "killed"  # a worker killed mid-run leaves only its checkpoint
    runs.save_checkpoint(killed, {"w": torch.zeros(2)}, {"model": "tiny"}, [], ["a", "b"])
    for name in ("killed", "missing", "../done", "..", "runs/done", "", ".hidden"):
        assert not shares.shareable(lab, name)
        with pytest.raises(shares.ShareError):
            shares.create(lab, name)
    assert shares.shareable(lab, "done")
    ghost = labs.Lab("0" * 32)
    before = _files(vislab_home)
    with pytest.raises(shares.ShareError, match="does not exist"):
        shares.create(ghost, "done")
    assert _files(vislab_home) == before and not ghost.folder.exists()  # no lab made for it
    assert not (lab.folder / "shares.json").exists() and done.is_dir()


def test_a_run_removed_later_says_so():
    lab = labs.create()
    folder = _run(lab)
    token = shares.create(lab, folder.name)
    (folder / "model.safetensors").unlink()
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(token)
    assert str(err.value) == shares.RUN_GONE


def test_a_lab_removed_by_age_leaves_no_live_token():
    import time

    lab, other = labs.create(), labs.create()
    folder, _ = _run(lab), _run(other)
    token, kept = shares.create(lab, folder.name), shares.create(other, folder.name)
    old = time.time() - 40 * 86400
    os.utime(lab.folder / "state.json", (old, old))
    assert labs.clean_old(30) == [lab.id]
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(token)
    assert str(err.value) == shares.LAB_GONE
    # a session still open on the removed lab writes it again under the same id (pages/_lab.persist), and
    # even a run of the same name there: the old link stays dead (the lab's own map went with the folder)
    lab.write_state({})
    _run(lab)
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(token)
    assert str(err.value) == shares.NOT_LIVE
    assert shares.resolve(kept)[0] == other  # another lab's link is untouched
    # the start-up sweep drops the records of labs that are gone; nothing else
    import shutil

    shutil.rmtree(lab.folder)
    assert len(shares.sweep()) == 1 and shares.resolve(kept)[0] == other
    with pytest.raises(shares.ShareError) as err:
        shares.resolve(token)
    assert str(err.value) == shares.UNKNOWN
