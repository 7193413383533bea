"""A small classroom (bench/load.py at N = 3, 64 px, 2 epochs): three real browsers train at once through the
server's queue. A regression to a stall (training back inside the web server, starved by its reruns and
garbage collections) fails here by timing out; the speed figures themselves belong to the benchmark."""

import sys
from pathlib import Path

import pytest

from tests import browser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
pytestmark = pytest.mark.browser


def test_three_users_training_at_once_all_finish(tmp_path):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    import load

    summary = load.run([3], epochs=2, per_class=8, size_steps=5, out=tmp_path, probe=True, finish_s=420,
                        baseline=False)
    row = summary["rows"][0]
    assert row["errors"] == [], row["errors"]
    assert len(row["results"]) == 3 and all(r.get("seconds") for r in row["results"])
    starts = sorted(r["start"] for r in row["results"])
    assert starts[-1] - starts[0] < 30  # they really pressed Start together
    assert row["page_switch_s"], "the browsing user could not switch pages while the class trained"
    assert row["server_exit"] in (0, -15), f"the server did not stop cleanly ({row['server_exit']})"
    assert len(row["worker_s"]) == 3, row["worker_s"]  # every job's worker ran start to finish
    assert (tmp_path / "load.md").read_text().count("\n") == 3
