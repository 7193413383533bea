"""The instructor's class datasets: publish the dataset of their own lab to every lab on the server, and
unpublish one (vislab.serving.class_data).

Not a page and not in the navigation: the Class page calls `publish_controls()` only after the instructor
key was checked, so a participant has no way to it. Participants see what is published as a choice on their
Data page (read-only, used in place).
"""

from __future__ import annotations

import time

import streamlit as st

from pages import _state
from vislab.serving import class_data, labs

PUBLISH_TITLE = "publish_title"  # the title box
PUBLISH = "publish_dataset"  # the "Publish to the class" button
UNPUBLISH_PREFIX = "unpublish_"  # + a digest: the "Unpublish" button of that dataset
_NOTE = "_publish_note"  # (kind, message) of the last unpublish, shown once after the rerun it causes


def _unpublish(digest: str) -> None:
    """The button's callback: runs before the rerun, so the list drawn after it is without the dataset."""
    try:
        was = class_data.unpublish(digest)
    except class_data.ClassDataError as exc:
        st.session_state[_NOTE] = ("error", f"Cannot unpublish: {exc}")
    else:
        st.session_state[_NOTE] = ("success", f"Unpublished **{labs.name_markdown(was.title)}**: labs that used it "
                                              "are asked for another dataset on their next page.")


def _publish_own() -> None:
    """The instructor's own lab's dataset, a title box and the Publish button."""
    ss = st.session_state
    ds = ss.get(_state.DATASET)
    if ds is None:
        st.info("Your own lab has no dataset yet: choose one on the Data page, then publish it here.")
        return
    used = ds.used
    st.markdown(f"Your lab's dataset: **{ds.markdown}**, {len(used.classes)} classes, {len(used.items)} images.")
    title = st.text_input("Title participants see", max_chars=class_data.TITLE_LIMIT, key=_state.kept(PUBLISH_TITLE),
                          placeholder="e.g. Textile defects, day 1")
    if not st.button("Publish to the class", type="primary", key=PUBLISH):
        return
    try:
        with st.spinner("Publishing (the images are copied once, into the class folder)…"):
            entry = class_data.publish(_state.current_lab(), used, title)
    except class_data.ClassDataError as exc:
        st.error(f"Cannot publish: {exc}")
        return
    name = labs.name_markdown(entry.title)
    if entry.fresh:
        st.success(f"Published **{name}** ({len(entry.classes)} classes, {entry.images} images): every lab on "
                   "this server now offers it on its Data page.")
    else:
        st.info(f"These images are already published, as **{name}**: nothing was copied again.")


def publish_controls() -> None:
    """Publish the instructor's dataset and list (and unpublish) the class datasets. Call only behind the key."""
    st.markdown("##### Publish your dataset to the class")
    _publish_own()
    st.markdown("##### Published class datasets")
    note = st.session_state.pop(_NOTE, None)
    if note:
        (st.error if note[0] == "error" else st.success)(note[1])
    entries = class_data.published()
    if not entries:
        st.caption("None yet: participants see only their own data and the bundled sample.")
    for entry in entries:
        left, right = st.columns([5, 1])
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.published))
        left.markdown(f"**{labs.name_markdown(entry.title)}** · {len(entry.classes)} classes, {entry.images} "
                      f"images, {entry.bytes / 2**20:.1f} MB · published {when}")
        right.button("Unpublish", key=f"{UNPUBLISH_PREFIX}{entry.digest}", on_click=_unpublish, args=(entry.digest,))


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
