"""Whatever people upload, the lab answers with a message and keeps to its own folders.

Every bad input is built here, in the test. Each case asserts on the message and on the file system.
"""

import io
import json
import re
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from vislab.data import archives, folders as data
from vislab import cli
from vislab.training import experiment, runs, loop as training
from vislab.data.synthetic import make_synthetic
from vislab.training.loop import TrainConfig


def _png(color=(200, 30, 30), size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def _good_entries():
    return {f"{c}/{i}.png": _png((40 * i, 100 + 50 * k, 200)) for k, c in enumerate("ab") for i in range(3)}


def _zip(tmp_path, entries: dict, name="upload.zip"):
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for arc, blob in entries.items():
            zf.writestr(arc, blob)
    return path


def _outside_untouched(tmp_path, work):
    """Nothing but the archive and the work folder in tmp_path."""
    return {p.name for p in tmp_path.iterdir()} <= {"upload.zip", work.name, "vislab_home"}


# ---- archives ------------------------------------------------------------------------------------------
def _written_anywhere(root, name: str) -> list:
    """Every file called `name` under `root`, hidden folders (the `.extracting-*` one) included."""
    return [p for p in root.rglob(name) if p.is_file()]


@pytest.mark.parametrize("kind", ["traversal", "absolute", "windows drive"])
def test_unsafe_paths_are_refused_before_anything_is_written(tmp_path, kind):
    # each evil entry, were it extracted, would land inside tmp_path, where rglob can see it:
    # ../../ from work/.extracting-*/ is tmp_path itself; the absolute one points into tmp_path/outside
    evil = {"traversal": "../../evil.png", "absolute": str(tmp_path / "outside" / "evil.png"),
            "windows drive": "C:/evil.png"}[kind]
    archive = _zip(tmp_path, {"a/ok.png": _png(), evil: _png()})
    work = tmp_path / "work"
    with pytest.raises(data.DataError, match=re.escape(f"unsafe path '{evil}'")):
        data.load_dataset(archive, work)
    assert not _written_anywhere(tmp_path, "evil.png")
    assert _outside_untouched(tmp_path, work)


def test_zip_bomb_by_ratio(tmp_path):
    archive = _zip(tmp_path, {**_good_entries(), "a/bomb.png": b"\0" * (20 << 20)})  # 20 MiB of zeros
    with pytest.raises(data.DataError, match="zip bomb"):
        data.load_dataset(archive, tmp_path / "work")
    assert not _written_anywhere(tmp_path / "work", "bomb.png")  # neither the temporary nor the final folder


def test_zip_bomb_by_total_size_and_file_count(tmp_path, monkeypatch):
    archive = _zip(tmp_path, _good_entries())
    monkeypatch.setattr(archives, "MAX_ZIP_BYTES", 100)
    with pytest.raises(data.DataError, match="unpacks to .* the limit is"):
        data.load_dataset(archive, tmp_path / "work")
    assert not _written_anywhere(tmp_path / "work", "*.png")
    monkeypatch.setattr(archives, "MAX_ZIP_BYTES", 1 << 30)
    monkeypatch.setattr(archives, "MAX_ZIP_FILES", 3)
    with pytest.raises(data.DataError, match="holds 6 files; the limit is 3"):
        data.load_dataset(archive, tmp_path / "work")
    assert not _written_anywhere(tmp_path / "work", "*.png")  # refused before the first file is written
    monkeypatch.setattr(archives, "MAX_ZIP_FILES", 20_000)
    report = data.load_dataset(archive, tmp_path / "work")  # within the limits the same zip is extracted,
    assert Path(report.root).parent == tmp_path / "work"  # into work/<name>-<sha12>, where the checks looked
    assert len(_written_anywhere(tmp_path / "work", "*.png")) == 6


def _mark_encrypted(path):
    """Set the 'encrypted' flag bit in every local and central header, as a password-protected zip has."""
    blob = bytearray(path.read_bytes())
    for signature, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (i := blob.find(signature, start)) >= 0:
            blob[i + flag_at] |= 0x1
            start = i + 4
    path.write_bytes(bytes(blob))


def test_encrypted_zip(tmp_path):
    archive = _zip(tmp_path, _good_entries())
    _mark_encrypted(archive)
    with pytest.raises(data.DataError, match="encrypted: zip it again without a password"):
        data.load_dataset(archive, tmp_path / "work")


def test_broken_and_fake_zips(tmp_path):
    good = _zip(tmp_path, _good_entries())
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[:200])  # the central directory is gone
    with pytest.raises(data.DataError, match="not a zip archive"):
        data.load_dataset(cut, tmp_path / "work")
    fake = tmp_path / "photo.zip"
    fake.write_bytes(_png())
    with pytest.raises(data.DataError, match="not a zip archive"):
        data.load_dataset(fake, tmp_path / "work")


def test_nested_top_folders_and_mac_junk(tmp_path):
    entries = {f"outer/inner/{k}": v for k, v in _good_entries().items()}
    entries["__MACOSX/outer/inner/a/._0.png"] = b"resource fork"
    entries["outer/inner/a/.DS_Store"] = b"junk"
    report = data.load_dataset(_zip(tmp_path, entries), tmp_path / "work")
    assert report.counts == {"a": 3, "b": 3} and report.skipped == []


# ---- images --------------------------------------------------------------------------------------------
def _frames_gif() -> bytes:
    buf = io.BytesIO()
    frames = [Image.new("P", (24, 24), i * 40) for i in range(3)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    return buf.getvalue()


def _cmyk_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(buf, format="JPEG")
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((128, 128), 60).convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()[:1500]


@pytest.mark.parametrize("file, blob, reason", [
    ("a/empty.png", b"", "empty file (0 bytes)"),
    ("a/cut.jpg", _truncated_jpeg(), "unreadable image"),
    ("a/corrupt.png", b"\x89PNG\r\n\x1a\n" + b"garbage" * 20, "unreadable image"),
    ("a/notes.jpg", b"just some text, not a picture", "not an image (cannot identify the format)"),
    ("a/readme.txt", b"hello", "not an image extension (.txt)"),
    ("a/tiny.png", _png(size=(4, 4)), "too small (4x4 px)"),
])
def test_bad_images_are_skipped_with_the_reason_and_good_ones_kept(tmp_path, file, blob, reason):
    report = data.load_dataset(_zip(tmp_path, {**_good_entries(), file: blob}), tmp_path / "work")
    assert reason in dict(report.skipped)[file]
    assert report.counts == {"a": 3, "b": 3}  # every good image is still there


def test_decompression_bomb_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 32 * 32)  # so a 100x100 image counts as a bomb
    report = data.load_dataset(_zip(tmp_path, {**_good_entries(), "a/huge.png": _png(size=(100, 100))}),
                               tmp_path / "work")
    assert dict(report.skipped)["a/huge.png"] == "image too large (Pillow's decompression-bomb limit)"


@pytest.mark.parametrize("file, blob", [
    ("a/gray.png", _png(128, mode="L")),
    ("a/alpha.png", _png((10, 20, 30, 0), mode="RGBA")),
    ("a/cmyk.jpg", _cmyk_jpeg()),
    ("a/anim.gif", _frames_gif()),
    ("a/UPPER.PNG", _png()),
])
def test_unusual_but_valid_images_are_used(tmp_path, file, blob):
    report = data.load_dataset(_zip(tmp_path, {**_good_entries(), file: blob}), tmp_path / "work")
    assert report.counts["a"] == 4 and not report.skipped


# ---- structure -----------------------------------------------------------------------------------------
def test_unicode_and_spaces_in_class_names(tmp_path):
    entries = {f"chat noir/{i}.png": _png((i * 50, 0, 0)) for i in range(3)}
    entries.update({f"café ☕/{i}.png": _png((0, i * 50, 0)) for i in range(3)})
    report = data.load_dataset(_zip(tmp_path, entries), tmp_path / "work")
    assert report.classes == ["café ☕", "chat noir"] and report.usable


def test_duplicate_files_across_classes_are_warned(tmp_path):
    entries = {**_good_entries(), "b/copy.png": _good_entries()["a/0.png"]}
    report = data.load_dataset(_zip(tmp_path, entries), tmp_path / "work")
    assert any("b/copy.png is the same file as a/0.png" in w for w in report.warnings)


# ---- training faults -----------------------------------------------------------------------------------
def test_nan_loss_stops_with_a_hint_and_keeps_the_last_good_checkpoint(synthetic, tmp_path, monkeypatch):
    """Epoch 1 trains normally; then the weights turn NaN (as a far too high learning rate makes them), so
    the first loss of epoch 2 is NaN. The run must stop there and save epoch 1's weights, not the NaN ones."""
    real_forward = training.forward_train
    seen = {}

    def forward(model, x):
        if seen.get("epoch_1"):
            with torch.no_grad():
                for p in model.parameters():
                    p.fill_(float("nan"))
            seen["poisoned"] = True
        seen["model"] = model
        return real_forward(model, x)

    def on_event(e):
        events.append(e)
        if e.kind == "epoch" and e.epoch == 1:  # the best checkpoint so far is epoch 1's
            seen["epoch_1"] = {k: v.detach().clone() for k, v in seen["model"].state_dict().items()}

    monkeypatch.setattr(training, "forward_train", forward)
    report = data.scan_folder(synthetic)
    spec = experiment.Spec(model="test_resnet", strategy="scratch", img_size=64,
                           train=TrainConfig(epochs=3, lr=1e-3, batch_size=8, device="cpu", cache=False))
    events = []
    result = experiment.train(spec, report, tmp_path / "run", on_event=on_event)
    assert result.history.stopped and "lower learning rate" in result.history.failure
    assert "at epoch 2, batch 1" in result.history.failure
    assert any(e.kind == "end" and "Try a lower learning rate" in e.message for e in events)
    assert len(result.history.epochs) == 1 and result.history.best_epoch == 1
    assert seen.get("poisoned")  # the weights were NaN when it stopped
    model, _ = runs.load(result.run_dir)
    saved = model.state_dict()
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert all(torch.equal(saved[k], v) for k, v in seen["epoch_1"].items())  # exactly epoch 1's weights


def test_a_run_resumes_from_disk(synthetic, tmp_path, capsys):
    args = ["train", "--data", str(synthetic), "--model", "test_resnet", "--weights", "auto", "--epochs", "1",
            "--img-size", "64", "--batch-size", "8", "--augment", "--aug-views", "2"]
    assert cli.main(args + ["--out", str(tmp_path / "first")]) == 0
    assert cli.main(args + ["--resume", str(tmp_path / "first"), "--out", str(tmp_path / "second")]) == 0
    config = json.loads((tmp_path / "second" / "config.json").read_text())
    assert config["resumed_from"] == str((tmp_path / "first").resolve())
    assert config["augment"] == {"crop": True, "hflip": True, "vflip": False, "rotate": False, "color": False,
                                 "views": 2}  # its settings carry over, augmentation included
    assert config["feature_cache"][0].startswith("features cached")
    first, _ = runs.load(tmp_path / "first")
    second, _ = runs.load(tmp_path / "second")
    assert not torch.equal(first.fc.weight, second.fc.weight)  # it trained on from the saved weights
    assert torch.equal(first.conv1[0].weight, second.conv1[0].weight)  # with the same frozen backbone


def test_resume_refuses_a_dataset_with_other_classes(synthetic, tmp_path, capsys):
    args = ["train", "--data", str(synthetic), "--model", "test_resnet", "--weights", "auto", "--epochs", "1",
            "--img-size", "64"]
    assert cli.main(args + ["--out", str(tmp_path / "first")]) == 0
    other = make_synthetic(tmp_path / "other", classes=2, per_class=4, size=64)
    rc = cli.main(["train", "--data", str(other), "--epochs", "1", "--resume", str(tmp_path / "first"),
                   "--out", str(tmp_path / "x")])
    assert rc == 2 and "trained on classes" in capsys.readouterr().err


def test_upload_limit_is_configured_and_stated():
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == 500
    page = (Path(__file__).resolve().parents[1] / "pages" / "data.py").read_text()
    assert 'st.get_option("server.maxUploadSize")' in page and "Up to {limit} MB" in page


def test_old_session_folders_are_removed_at_start_up(vislab_home):
    from pages import _startup
    from vislab import _paths as paths

    old = paths.work_dir() / "a1b2c3d4e5f6"
    (old / "zip-1" / "a").mkdir(parents=True)
    (old / "zip-1" / "a" / "x.png").write_bytes(_png())
    cli_dir = paths.work_dir() / "cli"
    cli_dir.mkdir()
    from vislab.training import engines

    exported = engines.exports_dir() / "m-0123.onnx"  # set-up's exports outlive a server start
    exported.parent.mkdir(parents=True)
    exported.write_bytes(b"graph")
    _startup.clean_work_dirs.clear()
    _startup.clean_work_dirs()
    assert not old.exists() and cli_dir.exists() and exported.exists()
    assert str(paths.work_dir()).startswith(str(vislab_home))  # all of it inside the app's own folder
