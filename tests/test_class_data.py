"""Class datasets (vislab.serving.class_data): published once into a read-only shared folder named by its
content, listed from manifests, opened like any folder dataset, unpublished; path tricks refused."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from vislab.data import folders
from vislab.serving import class_data, labs


def _lab_with(synthetic) -> tuple[labs.Lab, folders.DataReport]:
    """A lab whose own data folder holds a copy of the synthetic dataset (as an upload would)."""
    lab = labs.create()
    shutil.copytree(synthetic, lab.data_dir / "uploads")
    return lab, folders.scan_folder(lab.data_dir / "uploads")


def test_publishing_twice_is_one_read_only_folder(synthetic):
    lab, report = _lab_with(synthetic)
    first = class_data.publish(lab, report, "Stripes")
    again = class_data.publish(lab, folders.report_to_dict(report), "Another title")  # the dict a lab keeps
    assert first.fresh and not again.fresh
    assert again.digest == first.digest and again.title == "Stripes"
    folder = class_data.datasets_dir() / first.digest
    assert [p.name for p in class_data.datasets_dir().iterdir() if not p.name.startswith(".")] == [first.digest]
    assert first.counts == {"class_0": 8, "class_1": 8, "class_2": 8} and first.images == 24
    images = [p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert len(images) == 24 and {p.parent.name for p in images} == set(first.counts)
    for p in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert not mode & 0o222, f"{p} is writable ({oct(mode)})"
    assert not list(class_data.datasets_dir().glob(".publishing-*"))  # the temporary folder is gone


def test_the_digest_is_the_content_not_the_names_or_order(synthetic, tmp_path):
    lab, report = _lab_with(synthetic)
    renamed = lab.data_dir / "renamed"
    for c in ("class_0", "class_1", "class_2"):
        for i, f in enumerate(sorted((synthetic / c).iterdir())):
            (renamed / c).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, renamed / c / f"z{99 - i}.png")
    assert class_data.publish(lab, folders.scan_folder(renamed), "B").digest == \
        class_data.publish(lab, report, "A").digest
    fewer = folders.subset(report, 4)
    assert class_data.publish(lab, fewer, "Fewer").digest != class_data.publish(lab, report, "A").digest


def test_published_lists_manifests_and_open_published_scans_the_folder(synthetic):
    lab, report = _lab_with(synthetic)
    entry = class_data.publish(lab, report, "  Stripes\n**bold** <b>x</b>  ")
    (listed,) = class_data.published()
    assert listed.title == "Stripes **bold** <b>x</b>"  # plain text, one line; shown escaped by the pages
    assert listed.label == "Stripes **bold** <b>x</b> (3 classes, 24 images)" and listed.val is None
    opened = class_data.open_published(entry.digest)
    assert opened.usable and opened.counts == entry.counts and opened.root == str(entry.folder.resolve())
    assert all(Path(p).is_relative_to(entry.folder.resolve()) for p, _ in opened.items)


def test_a_given_val_split_is_kept(tmp_path, synthetic):
    lab = labs.create()
    for split, files in (("train", slice(0, 6)), ("val", slice(6, 8))):
        for c in ("class_0", "class_1"):
            (lab.data_dir / "tv" / split / c).mkdir(parents=True)
            for f in sorted((synthetic / c).iterdir())[files]:
                shutil.copyfile(f, lab.data_dir / "tv" / split / c / f.name)
    report = folders.scan_folder(lab.data_dir / "tv")
    assert report.fixed_val is not None and len(report.fixed_val) == 4
    entry = class_data.publish(lab, report, "Split")
    assert entry.val is not None and len(entry.val) == 4 and all(v.startswith("val/") for v in entry.val)
    opened = class_data.open_published(entry.digest)
    train, val = folders.split(opened.items, 0.2, 0, opened.fixed_val)
    assert len(train) == 12 and len(val) == 4


def test_empty_too_big_unusable_and_foreign_datasets_are_refused(synthetic, tmp_path, monkeypatch):
    lab, report = _lab_with(synthetic)
    empty = folders.DataReport(report.root, report.classes, [])
    with pytest.raises(class_data.ClassDataError, match="no images"):
        class_data.publish(lab, empty, "Empty")
    with pytest.raises(class_data.ClassDataError, match="title"):
        class_data.publish(lab, report, " \n\t")
    monkeypatch.setattr(class_data, "MAX_IMAGES", 10)
    with pytest.raises(class_data.ClassDataError, match="at most 10"):
        class_data.publish(lab, report, "Many")
    monkeypatch.setattr(class_data, "MAX_IMAGES", 2000)
    monkeypatch.setattr(class_data, "MAX_BYTES", 2000)
    with pytest.raises(class_data.ClassDataError, match="larger than"):
        class_data.publish(lab, report, "Big")
    monkeypatch.setattr(class_data, "MAX_BYTES", 500 * 2**20)
    foreign = folders.scan_folder(synthetic)  # files outside this lab, the sample and the class datasets
    with pytest.raises(class_data.ClassDataError, match="not a file of this lab"):
        class_data.publish(lab, foreign, "Foreign")
    one = folders.scan_folder(lab.data_dir / "uploads")
    one.errors.append("only one class")
    with pytest.raises(class_data.ClassDataError, match="cannot be trained"):
        class_data.publish(lab, one, "Bad")
    assert class_data.published() == []
    assert not class_data.datasets_dir().exists() or not any(class_data.datasets_dir().glob("*/"))


def test_path_tricks_in_a_digest_are_refused_before_a_path_is_built(synthetic, monkeypatch):
    lab, report = _lab_with(synthetic)
    entry = class_data.publish(lab, report, "Stripes")
    tricks = ("../" + entry.digest, "/etc", entry.digest + "/..", "..", entry.digest.upper(), "", None,
              str(entry.folder), entry.digest[:-1] + "/", f"{entry.digest[:32]}/../{entry.digest[:29]}")
    built = []  # a spy on where every path of the module starts
    real = class_data.datasets_dir
    monkeypatch.setattr(class_data, "datasets_dir", lambda: built.append(1) or real())
    for bad in tricks:
        for call in (class_data.open_published, class_data.unpublish, class_data.folder_of):
            with pytest.raises(class_data.ClassDataError, match="64 hex digits"):
                call(bad)
        assert class_data.get(bad) is None and not class_data.is_published(bad)
    assert not built  # refused before any path was built
    assert class_data.is_published(entry.digest)


def test_unpublish_removes_the_folder_and_the_lab_may_read_but_not_write_it(synthetic):
    lab, report = _lab_with(synthetic)
    entry = class_data.publish(lab, report, "Stripes")
    inside = next(entry.folder.rglob("*.png"))
    assert class_data.readable(lab, inside) and not class_data.writable(lab, inside)
    assert class_data.writable(lab, lab.data_dir / "x.png") and not class_data.readable(lab, "/etc/passwd")
    assert not class_data.readable(lab, entry.folder.parent.parent / "x")  # <home>/class, not a dataset
    from vislab.data import folders
    from vislab.serving import claims, jobs

    job = jobs.create(lab.runs_dir / "job1", "train", {"report": folders.report_to_dict(
        class_data.open_published(entry.digest))})  # queued
    assert job.state == "queued"
    with pytest.raises(class_data.ClassDataError, match="1 job"):
        class_data.unpublish(entry.digest)
    job.write_status(state="running", driver=claims.me())  # followed by a live process (this one)
    with pytest.raises(class_data.ClassDataError, match="1 job"):  # its images would vanish under it
        class_data.unpublish(entry.digest)
    assert entry.folder.is_dir() and class_data.published()
    job.write_status(state="done")
    was = class_data.unpublish(entry.digest)
    assert was.title == "Stripes" and not os.path.lexists(entry.folder) and class_data.published() == []
    assert not list(class_data.datasets_dir().glob(".removing-*"))
    with pytest.raises(class_data.ClassDataError, match="no longer published"):
        class_data.open_published(entry.digest)
    with pytest.raises(class_data.ClassDataError, match="already unpublished"):
        class_data.unpublish(entry.digest)
    assert class_data.publish(lab, report, "Again").fresh  # published anew after an unpublish
