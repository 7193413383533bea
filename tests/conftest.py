import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)

# tests never touch the user's ~/.vislab or the repository's .vislab, except for the seeded weights
REPO = Path(__file__).resolve().parents[1]
SEEDED_HOME = Path(os.environ.get("VISLAB_HOME", REPO / ".vislab"))


@pytest.fixture(autouse=True)
def vislab_home(tmp_path, monkeypatch):
    """A private VISLAB_HOME per test whose weights/hub folders point at the seeded ones (read-only use)."""
    home = tmp_path / "vislab_home"
    (home / "weights").mkdir(parents=True)
    if (SEEDED_HOME / "hub").exists():
        (home / "hub").symlink_to(SEEDED_HOME / "hub")  # read only: nothing in the tests writes there
    for f in (SEEDED_HOME / "weights").glob("*.safetensors"):
        (home / "weights" / f.name).symlink_to(f)
    manifest = SEEDED_HOME / "weights" / "manifest.json"
    if manifest.exists():  # a private copy, so imports in tests never touch the real one
        text = manifest.read_text().replace(str(SEEDED_HOME / "weights"), str(home / "weights"))
        (home / "weights" / "manifest.json").write_text(text)
    monkeypatch.setenv("VISLAB_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory):
    from vislab.data.synthetic import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synthetic"), classes=3, per_class=8, size=64)


def pytest_report_header(config):
    return f"torch {torch.__version__}, seeded weights at {SEEDED_HOME}"
