"""bench/page_switches.py (warm page switches, issue 22) keeps working: its visit order and statistics, the
table it writes, its quick run in a real browser. No speed assertions here: the figures belong to the
benchmark."""

import importlib.util
from pathlib import Path

import pytest

from tests import browser

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    """bench/page_switches.py, loaded from its file."""
    spec = importlib.util.spec_from_file_location("page_switches", ROOT / "bench" / "page_switches.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_round_visits_every_page_and_never_the_same_twice_in_a_row():
    bench = _bench()
    order = bench.visit_order(5, seed=0)
    assert len(order) == 5 * len(bench.TITLES)
    for r in range(5):
        assert sorted(order[r * 13:(r + 1) * 13]) == sorted(bench.TITLES)
    assert all(a != b for a, b in zip(order, order[1:]))
    assert order != bench.visit_order(5, seed=1) and order == bench.visit_order(5, seed=0)  # varied, repeatable


def test_95th_percentile_by_nearest_rank():
    bench = _bench()
    assert bench.pct95([0.3, 0.1, 0.2, 0.5, 0.4]) == 0.5  # 5 visits: the slowest
    assert bench.pct95([float(i) for i in range(1, 101)]) == 96.0
    assert bench.pct95([0.7]) == 0.7


def test_the_table_has_a_row_per_page_and_the_before_column():
    bench = _bench()
    pages = {t: {"first_s": 1.0, "warm_s": [0.2, 0.3], "median_s": 0.25, "p95_s": 0.3 if t != "Train" else 1.2,
                 "max_s": 0.3} for t in bench.TITLES}
    summary = {"date": "2026-12-05 10:00", "machine": "x86_64, 2 cores", "load_before": "1.00 / 1.00 / 1.00",
               "load_after": "2.00 / 1.00 / 1.00", "command": ".venv/bin/python bench/page_switches.py", "lab": "a lab",
               "rounds": 2, "errors": [], "pages": pages,
               "cold": {"server_healthy_s": 1.0, "home_first_text_s": 5.0, "home_complete_s": 9.0}}
    md = bench.markdown(summary, {"pages": {"Export & Netron": {"median_s": 4.0}}})
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| page")]
    assert len(rows) == len(bench.TITLES)
    assert "| Export & Netron | 1.00 | 4.00 | 0.25 | 0.30 | 0.30 | yes |" in rows
    assert "| Train | 1.00 | - | 0.25 | 1.20 | 0.30 | no |" in rows  # p95 over 1 s: not under target
    assert "Home complete (catalog and weight status, stopped running) after 9.0 s" in md
    assert "warm median before (s)" not in bench.markdown(summary, None)


@pytest.mark.browser
@pytest.mark.slow
def test_the_quick_run_builds_a_lab_and_times_every_page(tmp_path):
    reason = browser.why_unavailable()
    if reason:
        pytest.skip(reason)
    bench = _bench()
    assert bench.main(["--rounds", "1", "--no-compare", "--out", str(tmp_path)]) == 0  # 0: no error on any page
    import json

    summary = json.loads((tmp_path / "page_switches.json").read_text())
    assert list(summary["pages"]) == bench.TITLES
    assert all(len(r["warm_s"]) == 1 and r["first_s"] > 0 for r in summary["pages"].values())
    assert summary["cold"]["home_complete_s"] >= summary["cold"]["server_healthy_s"] > 0
    assert "train_s" in summary["build"] and "export_s" in summary["build"]
    assert (tmp_path / "page_switches.md").read_text().count("\n| ") == len(bench.TITLES) + 1  # the header and a row each
