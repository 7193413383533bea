import dataclasses
from functools import partial
from pathlib import Path

import streamlit as st

from pages import _charts, _dataset, _images, _route, _state, _working
from vislab.data import folders as data, datasets
from vislab.figures import charts as plots, images as pictures
from vislab.data.transforms import Augment, crop_seen, denormalize, load_image, train_transform
from vislab.serving import class_data, labs

_route.through_app()  # first: a page opened on its own (the first request after a restart) goes through app.py

# ---- this page's keys (kept: a person's settings, see _state.kept) ------------------------------------------
ZIP_READ_ID = "_zip_read"  # file id of the uploaded zip last read (a new file is read at once)
DATA_SOURCE = "data_source"
SAMPLE_PER_CLASS = "sample_per_class"
ZIP_UPLOAD = "zip_upload"
N_UPLOAD_CLASSES = "n_upload_classes"
CLS_NAME_PREFIX = "cls_name_"
CLS_FILES_PREFIX = "cls_files_"
VAL_FRAC = "val_frac"
SPLIT_SEED = "split_seed"
BALANCE = "balance"
PREVIEW_CLASSES = "preview_classes"
ZIP_READ_AGAIN = "zip_read"
AUG_PREFIX = "aug_"  # + an Augment field: the augmentation toggles and the number of cached views
USE_CLASS = "use_class_dataset"  # the button that makes the lab use the chosen class dataset

_dataset.open_page(warn=False)  # a class dataset unpublished meanwhile: said below, as an error
ss = st.session_state
st.title("Data")
limit = st.get_option("server.maxUploadSize")

gone = ss.get(_dataset.CLASS_GONE)
if gone and ss.get(_state.DATASET) is None:
    st.error(f"**The class dataset {labs.name_markdown(gone)} is no longer published**: the instructor "
             "unpublished it, so this lab has no dataset now. Pick another dataset below.")

SOURCES = {"sample": "Bundled textile sample", "zip": "A .zip of class folders", "uploads": "Images per class"}
CLASS_SOURCES = {}  # the Data page's line of each class dataset (plain text) -> its class_data.Published
for entry in class_data.published():  # manifests only: cheap on every run
    line = f"Class dataset: {entry.label}"
    CLASS_SOURCES[line if line not in CLASS_SOURCES else f"{line} · {entry.digest[:8]}"] = entry
SHOWN = {line: f"Class dataset: {labs.name_markdown(e.title)} ({len(e.classes)} classes, {e.images} images)"
         + line[len(f"Class dataset: {e.label}"):] for line, e in CLASS_SOURCES.items()}  # a title is text


def source_line(d: _dataset.Dataset) -> str:
    """The radio's option for where `d` came from."""
    if d.source == "class":
        return next((line for line, e in CLASS_SOURCES.items() if e.digest == d.published), SOURCES["sample"])
    return SOURCES[d.source]


in_use: _dataset.Dataset | None = ss.get(_state.DATASET)
if in_use is not None:  # the radio shows where the lab's dataset came from (until a person picks another)
    _state.follow(DATA_SOURCE, source_line(in_use))
    if in_use.per_class:
        _state.follow(SAMPLE_PER_CLASS, in_use.per_class)
options = list(SOURCES.values()) + list(CLASS_SOURCES)
if ss.get(DATA_SOURCE) not in (None, *options):  # a class dataset that was unpublished: back to the sample
    ss[DATA_SOURCE] = SOURCES["sample"]
source = st.radio("Images from", options, horizontal=True, key=_state.kept(DATA_SOURCE),
                  format_func=lambda o: SHOWN.get(o, o))
if in_use is not None and source != source_line(in_use):
    st.caption(f"The lab uses **{in_use.markdown}** until you build another dataset here.")

if source == "Bundled textile sample":
    st.caption("Textile photos from PyPI `conformal-clip-data`: 1,000 nominal, 500 with a local defect, 500 with "
               "a global defect. Unlike ImageNet, so thawing deeper stages matters here.")
    ss.setdefault(SAMPLE_PER_CLASS, 60)
    per_class = st.select_slider("Images per class (fewer = faster on a CPU)", [20, 40, 60, 100, 200, 500, 1000],
                                 key=_state.kept(SAMPLE_PER_CLASS))
    using = in_use is not None and in_use.source == "sample" and in_use.per_class == per_class
    if st.button("Use the sample" if not using else "Use the sample again", type="primary" if not using else
                 "secondary", help="The lab already uses this sample at this size." if using else None):
        root = data.sample_root()
        report = _dataset.scan(str(root), root.stat().st_mtime)
        ss[_state.DATASET] = _dataset.Dataset(report, f"textile sample ({per_class}/class)", per_class=per_class)
        ss.pop(_state.WORKING, None)

elif source in CLASS_SOURCES:
    entry = CLASS_SOURCES[source]
    counts = ", ".join(f"{c}: {n}" for c, n in entry.counts.items())
    st.markdown(f"Published by the instructor for the whole class: **{labs.name_markdown(entry.title)}**, "
                f"{len(entry.classes)} classes ({labs.name_markdown(counts)}), {entry.images} images"
                + (", with its own validation split." if entry.val is not None else "."))
    st.caption("Shared and read-only: your lab reads it in place (nothing is copied into your lab), and nothing "
               "here changes it. Your validation share, seed and augmentations are your own.")
    using = in_use is not None and in_use.published == entry.digest
    if st.button("Use this class dataset" if not using else "Use this class dataset again", key=USE_CLASS,
                 type="primary" if not using else "secondary",
                 help="The lab already uses this class dataset." if using else None):
        try:
            report = _dataset.class_report(entry.digest)
        except class_data.ClassDataError as exc:
            st.error(f"Cannot use this class dataset: {exc}")
        else:
            ss[_state.DATASET] = _dataset.class_dataset(report, entry)
            ss.pop(_state.WORKING, None)

elif source == "A .zip of class folders":
    st.caption(f"Layout: `<class name>/<image files>` (one top folder is fine). Up to {limit} MB.")
    up = st.file_uploader("Dataset .zip", type=["zip"], key=ZIP_UPLOAD)
    fresh = up is not None and ss.get(ZIP_READ_ID) != up.file_id  # read as soon as it is chosen
    again = up is not None and st.button("Read the zip again", key=ZIP_READ_AGAIN,
                                         help="It was read when chosen; read it again (e.g. after a fix)")
    if up is not None and (fresh or again):
        ss[ZIP_READ_ID] = up.file_id
        archive = _dataset.uploads_folder() / (data.safe_name(Path(up.name).stem)[:60] or "upload")
        archive = archive.with_name(archive.name + ".zip")  # messages name the user's own file
        archive.write_bytes(up.getvalue())
        folder = _dataset.uploads_folder() / "zips"  # extracted by content: the same zip is one folder, reused
        report = None
        try:
            with st.spinner(f"Reading {up.name}…"):
                report = data.load_dataset(archive, folder)
        except data.DataError as exc:
            st.error(f"Cannot use this zip: {exc}")
        finally:
            archive.unlink(missing_ok=True)
        if report is not None and not report.usable and ss.get(_state.DATASET) is not None:
            st.error("Cannot use this zip: " + "; ".join(report.errors) + ". The current dataset is kept.")
            report = None
        if report is not None:  # earlier zips stay: the lab's runs may still show their images
            ss[_state.ZIP_FOLDER] = report.root
            ss[_state.DATASET] = _dataset.Dataset(report, f"zip {up.name}")
            ss.pop(_state.WORKING, None)
    elif up is None:
        st.caption("Choose a .zip: it is read as soon as it is chosen.")

else:
    st.caption(f"Name each class and drop its images (JPEG, PNG, …; up to {limit} MB per upload).")
    n = st.number_input("Number of classes", 2, 20, 2, key=_state.kept(N_UPLOAD_CLASSES))
    entries = []
    cols = st.columns(min(int(n), 4))
    for i in range(int(n)):
        with cols[i % len(cols)]:
            cname = st.text_input(f"Class {i + 1} name", value=f"class_{i + 1}",
                                  key=_state.kept(f"{CLS_NAME_PREFIX}{i}"))
            ups = st.file_uploader(f"Images of '{cname}'", accept_multiple_files=True,
                                   key=f"{CLS_FILES_PREFIX}{i}",
                                   type=sorted(e.lstrip(".") for e in data.IMAGE_EXTS))
            entries.append((cname, [(u.name, u.getvalue()) for u in ups or []]))
    if st.button("Build the dataset", type="primary"):
        names = [c.strip().casefold() for c, _ in entries]
        files = dict(entries)
        if len(set(names)) != len(names) or not all(names):
            st.error("Each class needs its own, non-empty name.")
        else:
            try:
                report = data.from_uploads(files, _dataset.uploads_folder() / "uploads")
            except data.DataError as exc:
                st.error(str(exc))
            else:
                ss[_state.DATASET] = _dataset.Dataset(report, f"uploads ({len(files)} classes)")
                ss.pop(_state.WORKING, None)

ds: _dataset.Dataset | None = ss.get(_state.DATASET)
if ds is not None and ds is not in_use:  # built here, now: the radio and the size keep what they show
    _state.followed(DATA_SOURCE, source_line(ds))
    ss.pop(_dataset.CLASS_GONE, None)
    if ds.per_class:
        _state.followed(SAMPLE_PER_CLASS, ds.per_class)
if ds is None:
    st.info("No dataset yet: pick the sample or upload your own above.")
    st.stop()

report = ds.used
st.subheader(f"Dataset: {ds.markdown}")
for err in report.errors:
    st.error(err)
for warn in report.warnings[:10]:
    st.warning(warn)
if report.skipped:
    with st.expander(f"{len(report.skipped)} files skipped (and why)"):
        st.table([{"file": f, "reason": r} for f, r in report.skipped[:300]])
        if len(report.skipped) > 300:
            st.caption(f"… and {len(report.skipped) - 300} more (`vislab data check` lists them all)")
if not report.usable:
    st.stop()

c1, c2 = st.columns(2)
given = report.fixed_val is not None  # a train/ val/ layout: its own split is used
ds.val_frac = c1.slider("Validation share", 0.1, 0.5, ds.val_frac, 0.05, key=_state.kept(VAL_FRAC), disabled=given,
                        help="Not used: the dataset's own train/ val/ folders give the split." if given else None)
ds.seed = int(c2.number_input("Split seed", 0, 10_000, ds.seed, key=_state.kept(SPLIT_SEED)))
train_items, val_items = ds.split()
count = lambda items: {c: sum(1 for _, y in items if y == i) for i, c in enumerate(report.classes)}  # noqa: E731
how = "as given by its folders" if given else f"stratified, seed {ds.seed}"
st.markdown(f"**{len(report.items)} images, {len(report.classes)} classes** — {len(train_items)} for training, "
            f"{len(val_items)} for validation ({how}).")
_charts.chart(plots.class_balance(report.counts, count(train_items), count(val_items)), key=BALANCE)

st.subheader("Preview")
by_class = {i: [p for p, y in report.items if y == i][:6] for i in range(len(report.classes))}
shown = list(range(len(report.classes)))
if len(shown) > 12:  # many classes: pick which to look at (each row is 6 thumbnails)
    picked = st.multiselect("Classes to preview", report.classes, default=report.classes[:12],
                            key=_state.kept(PREVIEW_CLASSES))
    shown = [report.classes.index(c) for c in picked]
images, captions = [], []
for i in shown:
    cname = report.classes[i]
    cols = st.columns(6)
    for col, path in zip(cols, by_class[i]):
        img = _images.thumbnail(path)
        col.image(img, caption=cname, width="stretch")
        images.append(img)
        captions.append(cname)
_images.download_png(partial(pictures.image_grid, images, captions, cols=6, cell=140), "dataset_preview.png")

st.subheader("Augmentations (training only)")
aug = ss.get(_state.AUGMENT) or Augment()
AUG_FIELDS = {"crop": "random crop", "hflip": "h-flip", "vflip": "v-flip", "rotate": "rotate ±15°",
              "color": "colour jitter", "views": None}
for name in AUG_FIELDS:  # the boxes show the lab's augmentations (also when another tab changed them)
    _state.follow(f"{AUG_PREFIX}{name}", getattr(aug, name))
a = st.columns(5)
picked = {name: a[i].toggle(label, key=_state.kept(f"{AUG_PREFIX}{name}"))
          for i, (name, label) in enumerate(AUG_FIELDS.items()) if label}
aug = dataclasses.replace(aug, **picked)
if aug.any:
    views = st.number_input(
        "Augmented views to cache per image", 0, 32, key=_state.kept(f"{AUG_PREFIX}views"),
        help="0: a new random view of every image each epoch, so the frozen layers run every epoch (slow). "
             "K: K fixed random views per image, epoch e trains on view e mod K; a frozen prefix then runs "
             "once on K x the images and training is cached (fast).")
    aug = dataclasses.replace(aug, views=int(views))
ss[_state.AUGMENT] = aug
for name in AUG_FIELDS:
    _state.followed(f"{AUG_PREFIX}{name}", getattr(aug, name))
model, info = _working.working()
sample = load_image(train_items[0][0])
tf = train_transform(info.data_config, aug)
if aug.any and aug.views:  # the exact fixed views training will use for this image (same seed)
    fixed = datasets.AugmentedViews(train_items[:1], tf, aug.views, ds.seed)
    shown = min(5, aug.views)
    views = [crop_seen(sample, info.data_config)] + [
        pictures.to_pil(denormalize(fixed[v][0], info.data_config)) for v in range(shown)]
    labels = ["what the model sees"] + [f"view {v} (epoch {v + 1}, {v + 1 + aug.views}, …)" for v in range(shown)]
elif aug.any:
    views = [crop_seen(sample, info.data_config)] + [
        pictures.to_pil(denormalize(tf(sample), info.data_config)) for _ in range(5)]
    labels = ["what the model sees"] + [f"augmented #{k}" for k in range(1, 6)]
else:  # no augmentation: training sees this one picture of the image, every epoch
    views = [crop_seen(sample, info.data_config)]
    labels = ["what the model sees (every epoch)"]
st.image(views, caption=labels, width=150)
_images.download_png(partial(pictures.image_grid, views, labels, cols=6, cell=150), "augmentations.png")
if not aug.any:
    st.caption("All augmentations off: every epoch sees the same pixels (later, frozen features can be cached).")
elif aug.views:
    st.caption(f"{aug.views} fixed random view(s) per image, reused every {aug.views} epoch(s): the frozen "
               "layers can be cached on them.")
else:
    st.caption("New random views every epoch: training runs the whole network each epoch (no feature cache).")
