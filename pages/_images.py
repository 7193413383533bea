"""Images in and out of the pages: the image picker of the look pages (bundled photos, validation images,
an upload), cached thumbnails, and PNG downloads."""

from __future__ import annotations

import io
from pathlib import Path

import streamlit as st

from pages import _state
from pages._dataset import Dataset
from pages._runs import current_run
from pages._state import DATASET


DL_PREFIX = "dl-"  # + a file name: the download button of that file

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "astronaut": "astronaut", "rocket": "rocket",
          "motorcycle": "stereo_motorcycle"}


@st.cache_data(show_spinner=False)
def photo(name: str):
    """A scikit-image bundled photo as a PIL image."""
    import skimage.data
    from PIL import Image

    arr = getattr(skimage.data, PHOTOS[name])()
    return Image.fromarray(arr[0] if isinstance(arr, tuple) else arr).convert("RGB")


def pick_images(key: str, max_n: int = 8, default_n: int = 1) -> list[tuple[str, object]]:
    """Images from scikit-image's photos, the current validation split, or an upload: [(label, PIL)]."""
    from PIL import Image, UnidentifiedImageError

    from vislab.data.transforms import load_image, to_rgb

    ds: Dataset | None = st.session_state.get(DATASET)
    sources = ["bundled photos"] + (["validation images"] if ds else []) + ["upload"]
    current = current_run() if ds else None  # a run of the model in use: its own validation images come first
    _state.follow(f"{key}_src", sources[1 if current else 0])  # a person's pick stays until a run appears
    source = st.radio("Images", sources, horizontal=True, key=f"{key}_src")
    if source == "bundled photos":
        names = st.multiselect("Photos", list(PHOTOS), default=list(PHOTOS)[:default_n], max_selections=max_n,
                               key=_state.kept(f"{key}_photos"))
        return [(n, photo(n)) for n in names]
    if source == "validation images":
        _, val = ds.split()
        preds = current[2] if current else None
        order = list(range(len(val)))
        if preds is not None and st.toggle("top losses first", True, key=_state.kept(f"{key}_toplosses")):
            from vislab.training import evaluation

            by_path = {p: i for i, (p, _) in enumerate(val)}
            order = [by_path[preds.paths[i]] for i in evaluation.top_losses(preds, len(val))
                     if preds.paths[i] in by_path]
        most = min(max_n, len(val))
        if most <= 1:  # a page that shows one image (or a split with one): nothing to choose (1-to-1 slider)
            n = 1
        else:
            _state.clamp(f"{key}_count", 1, most)  # kept from a larger dataset
            n = st.slider("How many", 1, most, min(default_n, most), key=_state.kept(f"{key}_count"))
        picked = [val[i] for i in order[:n]]
        return [(f"{ds.report.classes[y]}: {Path(p).name}", load_image(p)) for p, y in picked]
    ups = st.file_uploader("Images", type=["jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff"],
                           accept_multiple_files=True, key=f"{key}_up")
    out = []
    for up in (ups or [])[:max_n]:
        try:
            out.append((up.name, to_rgb(Image.open(up))))
        except (UnidentifiedImageError, OSError) as exc:
            st.error(f"{up.name}: not a readable image ({exc})")
    return out


@st.cache_data(show_spinner=False, max_entries=2000)
def _thumbnail(path: str, mtime: float, size: int):
    from vislab.data.transforms import load_image

    img = load_image(path)
    img.thumbnail((size, size))  # a 6000 px photo is not sent to the browser on every rerun
    return img


def thumbnail(path: str, size: int = 256):
    """An upright RGB thumbnail of an image file, cached per file version."""
    return _thumbnail(str(path), Path(path).stat().st_mtime, size)


def png_bytes(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def download_png(image, name: str, label: str = "Download PNG") -> None:
    """A PNG download button. `image` is a PIL image or a zero-argument function that makes one: then the
    grid is composed and encoded only when someone clicks (Streamlit runs the function in its own thread),
    not on every rerun of the page."""
    data = (lambda: png_bytes(image())) if callable(image) else png_bytes(image)
    st.download_button(label, data, file_name=name, mime="image/png", key=f"{DL_PREFIX}{name}")


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
