import zipfile
from pathlib import Path

import pytest
from PIL import Image

from vislab import cli
from vislab.data import folders as data


def _image(path, size=(32, 32), color=(200, 30, 30), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path)
    return path


def _dataset(root, classes=("a", "b"), n=4):
    for c in classes:
        for i in range(n):
            _image(root / c / f"{i}.png", color=(40 * i, 100, 200))
    return root


def test_corrupt_image_is_skipped_and_listed(tmp_path, capsys):
    root = _dataset(tmp_path / "ds")
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "b" / "notes.txt").write_text("hello")
    report = data.scan_folder(root)
    skipped = dict(report.skipped)
    assert "unreadable" in skipped["a/broken.jpg"] or "not an image" in skipped["a/broken.jpg"]
    assert "0 bytes" in skipped["b/empty.png"]
    assert "extension" in skipped["b/notes.txt"]
    assert report.counts == {"a": 4, "b": 4} and report.usable
    assert cli.main(["data", "check", str(root)]) == 0
    out = capsys.readouterr().out
    assert "a/broken.jpg" in out and "skipped 3 files" in out


def test_truncated_image_is_skipped(tmp_path):
    root = _dataset(tmp_path / "ds")
    good = tmp_path / "big.jpg"
    Image.effect_noise((256, 256), 50).convert("RGB").save(good, quality=90)
    blob = good.read_bytes()
    (root / "a" / "cut.jpg").write_bytes(blob[: len(blob) // 2])
    report = data.scan_folder(root)
    assert "a/cut.jpg" in dict(report.skipped)


def test_single_class_folder_is_refused(tmp_path, capsys):
    root = _dataset(tmp_path / "one", classes=("only",))
    report = data.scan_folder(root)
    assert not report.usable and "only one class" in report.errors[0]
    assert cli.main(["data", "check", str(root)]) == 2
    err = capsys.readouterr().err
    assert "only one class" in err and "Traceback" not in err


def test_too_few_images_and_empty_class(tmp_path):
    root = _dataset(tmp_path / "few", classes=("a",), n=5)
    _image(root / "b" / "0.png")
    (root / "c").mkdir()
    report = data.scan_folder(root)
    text = " ".join(report.errors)
    assert "class 'b' has 1 image" in text and "class 'c' has no usable images" in text


def test_images_outside_class_folders_and_hidden_junk(tmp_path):
    root = _dataset(tmp_path / "ds")
    _image(root / "stray.png")
    _image(root / "__MACOSX" / "a" / "._0.png")
    (root / "a" / ".DS_Store").write_bytes(b"junk")
    report = data.scan_folder(root)
    assert report.classes == ["a", "b"]
    assert dict(report.skipped) == {"stray.png": "image outside any class folder"}


def test_stratified_split_is_seeded_and_keeps_every_class():
    items = [(f"a{i}", 0) for i in range(10)] + [(f"b{i}", 1) for i in range(3)]
    train, val = data.split(items, 0.2, seed=1)
    assert data.split(items, 0.2, seed=1) == (train, val)
    assert {label for _, label in val} == {0, 1} and {label for _, label in train} == {0, 1}
    assert len(train) + len(val) == 13 and not set(train) & set(val)


def test_zip_with_top_folder_is_read(tmp_path):
    src = _dataset(tmp_path / "ds")
    archive = tmp_path / "ds.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.rglob("*.png"):
            zf.write(p, f"mydata/{p.relative_to(src)}")
    report = data.load_dataset(archive, tmp_path / "work")
    assert report.counts == {"a": 4, "b": 4}
    assert str(tmp_path / "work") in report.root


def test_zip_path_traversal_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/ok.png", b"x")
        zf.writestr("../../escaped.png", b"x")
    with pytest.raises(data.DataError, match="unsafe path"):
        data.load_dataset(archive, tmp_path / "work")
    assert not (tmp_path / "escaped.png").exists()


def test_not_a_zip(tmp_path):
    fake = tmp_path / "fake.zip"
    fake.write_text("plain text")
    with pytest.raises(data.DataError, match="not a zip"):
        data.load_dataset(fake, tmp_path / "work")


def test_uploads_per_class(tmp_path):
    def blob(k):
        return _image(tmp_path / f"x{k}.png", color=(10 * k, 30, 30)).read_bytes()

    report = data.from_uploads({"cats": [("a.png", blob(1)), ("b.png", blob(2))],
                                "dogs": [("c.png", blob(3)), ("c.png", blob(4)), (".png", blob(5))]},
                               tmp_path / "up")
    assert report.counts == {"cats": 2, "dogs": 3}


def test_upload_class_names_are_cleaned_and_collisions_refused(tmp_path):
    png = _image(tmp_path / "x.png").read_bytes()
    other = _image(tmp_path / "y.png", color=(0, 0, 250)).read_bytes()
    report = data.from_uploads({"a" * 300: [("1.png", png), ("2.png", other)],
                                "nul\x00name/..": [("1.png", png), ("2.png", other)]}, tmp_path / "up")
    assert report.usable and all(len(c.encode()) <= 120 and "\x00" not in c and "/" not in c
                                 for c in report.classes)
    with pytest.raises(data.DataError, match="both become the folder"):
        data.from_uploads({"a/b": [("1.png", png)], "a_b": [("2.png", png)]}, tmp_path / "up2")


def test_duplicates_inside_a_class_are_kept_once(tmp_path):
    root = _dataset(tmp_path / "d")
    (root / "a" / "copy.png").write_bytes((root / "a" / "0.png").read_bytes())
    report = data.scan_folder(root)
    assert any(p.endswith("copy.png") and "kept once" in why for p, why in report.skipped)
    train, val = data.split(report.items, 0.5, 0)
    assert not ({p for p, _ in train} & {p for p, _ in val})


def test_a_train_val_layout_keeps_its_own_split(tmp_path):
    for split, n in (("train", 4), ("val", 2)):
        for c, color in (("cat", (200, 0, 0)), ("dog", (0, 0, 200))):
            for i in range(n):
                _image(tmp_path / "ds" / split / c / f"{i}.png", color=(color[0] + 5 * i + (split == "val"),
                                                                       color[1], color[2]))
    _image(tmp_path / "ds" / "test" / "cat" / "t.png")
    report = data.scan_folder(tmp_path / "ds")
    assert report.usable and report.classes == ["cat", "dog"]
    assert any("train/ val/ layout" in w and "test/ is left out" in w for w in report.warnings)
    train, val = data.split(report.items, 0.2, 0, report.fixed_val)
    assert len(train) == 8 and len(val) == 4 and all("/val/" in p for p, _ in val)
    assert not any("/test/" in p for p, _ in report.items)
    small = data.subset(report, 1, 0)  # a per-class limit keeps the given split
    tr, va = data.split(small.items, 0.2, 0, small.fixed_val)
    assert all("/train/" in p for p, _ in tr) and all("/val/" in p for p, _ in va)


def test_nested_class_folders_get_a_warning_and_numeric_classes_sort_naturally(tmp_path):
    for c in ("10", "2", "1"):
        for i in range(3):
            _image(tmp_path / "ds" / c / f"{i}.png", color=(int(c) * 10 + i, 0, 0))
    _image(tmp_path / "ds" / "1" / "inner" / "x.png", color=(1, 2, 3))
    report = data.scan_folder(tmp_path / "ds")
    assert report.classes == ["1", "2", "10"]
    assert any("class '1' has sub-folders (inner)" in w for w in report.warnings)


def test_zips_are_extracted_by_content_and_odd_names_never_delete_anything(tmp_path):
    import zipfile

    root = _dataset(tmp_path / "d")
    work = tmp_path / "work"
    keep = work / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("another session's file")
    archive = tmp_path / "...zip"  # its stem is '..'
    with zipfile.ZipFile(archive, "w") as zf:
        for p in root.rglob("*.png"):
            zf.write(p, p.relative_to(root))
    first = data.load_dataset(archive, work)
    again = data.load_dataset(archive, work)
    assert first.usable and first.root == again.root and Path(first.root).parent == work.resolve()
    assert keep.read_text() == "another session's file"
    long = tmp_path / "long.zip"
    with zipfile.ZipFile(long, "w") as zf:
        zf.writestr("a" * 300 + "/x.png", b"x")
    with pytest.raises(data.DataError, match="cannot extract"):
        data.load_dataset(long, work)
    clash = tmp_path / "clash.zip"
    with zipfile.ZipFile(clash, "w") as zf:
        zf.writestr("a", b"file")
        zf.writestr("a/x.png", b"x")
    with pytest.raises(data.DataError, match="cannot extract"):
        data.load_dataset(clash, work)
    assert not [p for p in work.iterdir() if p.name.startswith(".extracting")]  # no half-extracted leftovers


def test_unreadable_root_is_a_message(tmp_path, monkeypatch):
    root = _dataset(tmp_path / "d")

    def denied(self):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(data.DataError, match="permission denied"):
        data.scan_folder(root)


def test_extreme_strips_and_nan_pixels(tmp_path):
    import numpy as np

    from vislab.data.transforms import load_image

    strip = _image(tmp_path / "strip.png", size=(3000, 20))
    assert "aspect ratio" in data.check_image(strip)
    arr = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    arr[0, 0] = np.nan
    arr[1, 1] = np.inf
    Image.fromarray(arr, mode="F").save(tmp_path / "f.tif")
    img = np.asarray(load_image(tmp_path / "f.tif"))
    assert img.max() == 255 and img[32, 32, 0] > 50  # scaled by the finite pixels, not all black


def test_odd_images_are_read_upright_rgb(tmp_path):
    from vislab.data.transforms import load_image

    gray = _image(tmp_path / "g.png", mode="L")
    pal = tmp_path / "p.png"
    Image.new("RGB", (20, 10), (0, 255, 0)).convert("P").save(pal)
    rgba = tmp_path / "t.png"
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(rgba)
    deep = tmp_path / "d.png"
    Image.new("I;16", (10, 10), 4000).save(deep)
    rotated = tmp_path / "r.jpg"
    img = Image.new("RGB", (40, 20), (10, 10, 10))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 on display
    img.save(rotated, exif=exif)
    for p in (gray, pal, rgba, deep):
        assert load_image(p).mode == "RGB"
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert load_image(rotated).size == (20, 40)


def test_sample_dataset_is_installed():
    report = data.scan_folder(data.sample_root(), check=False)
    assert report.classes == ["global", "local", "nominal"]
    assert report.counts == {"global": 500, "local": 500, "nominal": 1000}
    small = data.subset(report, 5, seed=0)
    assert small.counts == {"global": 5, "local": 5, "nominal": 5}
    assert data.subset(report, 5, seed=0).items == small.items


def test_symlinks_in_a_zip_are_listed_not_followed(tmp_path):
    src = _dataset(tmp_path / "ds")
    archive = tmp_path / "links.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.rglob("*.png"):
            zf.write(p, str(p.relative_to(src)))
        link = zipfile.ZipInfo("a/passwd.png")
        link.external_attr = (0o120777 << 16)  # a symlink entry pointing outside
        zf.writestr(link, "/etc/passwd")
    report = data.load_dataset(archive, tmp_path / "work")
    assert ("a/passwd.png", "symbolic link in the archive (not extracted)") in report.skipped
    assert report.counts == {"a": 4, "b": 4}
    root = Path(report.root)  # the folder the zip was really extracted to: work/links-<sha12>
    assert root.parent == tmp_path / "work" and (root / "a" / "0.png").is_file()
    assert not (root / "a" / "passwd.png").exists() and not list((tmp_path / "work").rglob("passwd.png"))


def test_a_symlinked_class_folder_is_listed_not_dropped(tmp_path):
    root = _dataset(tmp_path / "d", classes=("a", "b"))
    _dataset(tmp_path / "elsewhere", classes=("c",))
    (root / "c").symlink_to(tmp_path / "elsewhere" / "c", target_is_directory=True)
    report = data.scan_folder(root)
    assert report.classes == ["a", "b"]
    assert ("c", "symbolic link to a folder (not followed)") in report.skipped
