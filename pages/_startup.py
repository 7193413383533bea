"""What the app does once when the server starts: clear the scratch left by the last run of the server."""

from __future__ import annotations

import shutil

import streamlit as st

from vislab import _paths as paths
from vislab.serving import labs, shares


@st.cache_resource
def clean_work_dirs() -> bool:
    """Once per app start: remove the scratch folders (not the CLI's, not the exported prefixes), and labs
    unused for longer than `VISLAB_LAB_DAYS` (default 30) days, with the share records of labs that are gone."""
    root = paths.work_dir()
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and child.name not in paths.KEPT_WORK_DIRS:  # the CLI's, the engines' exports
                shutil.rmtree(child, ignore_errors=True)
    labs.clean_old()
    shares.sweep()  # a removed lab's links already fail (its shares.json went with it): this tidies the records
    return True


if __name__ == "__main__":  # opened as a page of its own (Streamlit's old pages-folder mode)
    from pages import _route

    _route.through_app()
