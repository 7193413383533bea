"""Warm page switches in a real browser (issue 22): every page, many times, in varied order.

    .venv/bin/python bench/page_switches.py                  # about 5-10 minutes on 2 CPU cores
    .venv/bin/python bench/page_switches.py --rounds 2 --no-compare --out /tmp/x   # a quick look

Starts `streamlit run app.py` on a fresh VISLAB_HOME (the seeded weights linked in, as bench/load.py does) and
times the cold server's first Home page: from starting the process until the page stops running with its
catalog and weight status drawn. Then one headless Chromium user builds a lab through the UI: the bundled
textile sample at 20 images per class (Data), a head-only run at 64 px (Train, waiting for it to finish), a
comparison of the default strategies at 64 px, 1 epoch each (Compare), one TorchScript export (Export & Netron).
Then it opens every page once from the sidebar (the first visit: models loaded, views computed) and visits
them `--rounds` more times, each round in a new shuffled order (never the same page twice in a row, seeded):
those are the warm switches. Last, it presses *Export and verify* three times on the unchanged model.

A switch is timed from the click on the sidebar link until the page has stopped running: the server has sent
the end of a complete script run (`script_finished`, read off the page's websocket) and the page shows no
"Running…" status widget (tests/browser.py's wait_idle), polled every 50 ms. Per page: the first visit, the
median, the 95th percentile (nearest rank: with 5 visits, the slowest) and the max of the warm visits.
Writes bench/page_switches.json and bench/page_switches.md (or --out), with the command and the machine's load average.
--baseline FILE adds a column with the medians of an earlier page_switches.json (before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shlex
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from load import fresh_home  # noqa: E402 - bench/load.py, its sibling
from tests import browser  # noqa: E402

# the sidebar's titles (pages/_route.py), in its order
TITLES = ["Home", "Model", "Data", "Freeze & BatchNorm", "Train", "Compare", "CAM & Grad-CAM", "SE channel weights",
          "Attention", "Feature maps", "Layer responses", "Export & Netron", "Concepts"]
# what each page's title (its h1) starts with: checked after every switch, so a timing is of the right page
H1 = {"Home": "vislab", "Compare": "Compare strategies", "Layer responses": "What each layer responds to"}
POLL_S = 0.05
T0 = time.perf_counter()

def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f} s] {msg}", flush=True)

def pct95(values: list[float]) -> float:
    """The 95th percentile by nearest rank (bench/load.py's): with fewer than 20 values, the largest."""
    s = sorted(values)
    return s[min(len(s) - 1, int(0.95 * len(s)))]

class Runs:
    """Listens to the page's websocket: when each complete script run ended (ForwardMsg.script_finished,
    FINISHED_SUCCESSFULLY; not a fragment's run, not a run cut short by st.rerun)."""

    def __init__(self, page):
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._msg, self.finished, self.runs_since = ForwardMsg, [], 0
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        if not isinstance(payload, (bytes, bytearray)):
            return
        msg = self._msg()
        try:
            msg.ParseFromString(bytes(payload))
        except Exception:  # noqa: BLE001 - not a ForwardMsg: not ours to time
            return
        if msg.WhichOneof("type") == "script_finished" and \
                msg.script_finished == self._msg.ScriptFinishedStatus.FINISHED_SUCCESSFULLY:
            self.finished.append(time.perf_counter())

    def ended_since(self, t: float) -> bool:
        return any(f >= t for f in self.finished)

def idle(page) -> bool:
    return page.locator('[data-testid="stStatusWidget"]').count() == 0

def settle(page, runs: Runs, since: float, timeout: float = 300.0, optional: bool = False) -> float:
    """Seconds from `since` until a complete script run has ended after it and no status widget shows,
    polled every 50 ms. `optional`: the action may cause no run at all (a radio already on that option):
    idle for 2 s with no run is done too."""
    deadline = since + timeout
    while time.perf_counter() < deadline:
        page.wait_for_timeout(POLL_S * 1000)  # also lets playwright deliver the websocket events
        if runs.ended_since(since) and idle(page):
            return time.perf_counter() - since
        if optional and time.perf_counter() - since > 2 and idle(page):
            return time.perf_counter() - since
    raise TimeoutError(f"the page kept running for {timeout:.0f} s")

def switch(page, runs: Runs, title: str) -> float:
    """Click `title` in the sidebar; seconds until that page has stopped running."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_text(title, exact=True)
    link.wait_for()
    start = time.perf_counter()
    link.click()
    return settle(page, runs, start)

def act(page, runs: Runs, do, timeout: float = 300.0, optional: bool = False) -> float:
    """Run `do()` (a click, a key press) and wait until the script run it caused has ended."""
    start = time.perf_counter()
    do()
    return settle(page, runs, start, timeout, optional)

def slide_to(page, runs: Runs, slider, value: str) -> None:
    """Move a select_slider with the arrow keys until it shows `value`."""
    for _ in range(12):
        now = slider.get_attribute("aria-valuetext") or slider.get_attribute("aria-valuenow")
        if now == value:
            return
        key = "ArrowLeft" if float(now) > float(value) else "ArrowRight"
        act(page, runs, lambda: slider.press(key))
    raise RuntimeError(f"the slider did not reach {value}")

def build_lab(page, runs: Runs, epochs: int, compare: bool, per_class: int) -> dict:
    """The lab a person has after a session: sample data, a finished run, a comparison, an export."""
    took = {}
    t = time.perf_counter()
    switch(page, runs, "Data")
    act(page, runs, lambda: page.get_by_text("Bundled textile sample", exact=True).click(), optional=True)
    slide_to(page, runs, page.get_by_role("slider").first, str(per_class))
    act(page, runs, lambda: page.get_by_role("button", name=re.compile("^Use the sample")).click())
    page.get_by_text(f"textile sample ({per_class}/class)").first.wait_for(timeout=120_000)
    took["data_s"] = time.perf_counter() - t
    log(f"data: textile sample, {per_class}/class ({took['data_s']:.1f} s)")

    t = time.perf_counter()
    switch(page, runs, "Train")
    box = page.get_by_label("Epochs", exact=True)
    box.fill(str(epochs))
    act(page, runs, lambda: box.press("Enter"))
    slide_to(page, runs, page.get_by_role("slider").nth(1), "64")  # batch size, image size, ...
    act(page, runs, lambda: page.get_by_role("button", name="Start training").click())
    page.get_by_text(re.compile(r"best val acc \d")).first.wait_for(timeout=900_000)
    settle(page, runs, time.perf_counter(), optional=True)
    if page.get_by_text("Training failed").count():
        raise RuntimeError("training failed")
    took["train_s"] = time.perf_counter() - t
    log(f"train: head only, {epochs} epoch(s) at 64 px ({took['train_s']:.1f} s)")

    if compare:
        t = time.perf_counter()
        switch(page, runs, "Compare")
        box = page.get_by_label("Epochs per run", exact=True)
        box.fill("1")
        act(page, runs, lambda: box.press("Enter"))
        slide_to(page, runs, page.get_by_role("slider").first, "64")  # image size, batch size
        act(page, runs, lambda: page.get_by_role("button", name="Run comparison").click())
        page.get_by_text(re.compile(r"^\d+ runs of ")).first.wait_for(timeout=1_800_000)
        settle(page, runs, time.perf_counter(), optional=True)
        took["compare_s"] = time.perf_counter() - t
        log(f"compare: the default strategies, 1 epoch each at 64 px ({took['compare_s']:.1f} s)")

    t = time.perf_counter()
    switch(page, runs, "Export & Netron")
    act(page, runs, lambda: page.get_by_role("button", name="Export and verify").click())
    page.get_by_text(re.compile(r"exported in \d")).first.wait_for(timeout=300_000)
    took["export_s"] = time.perf_counter() - t
    log(f"export: TorchScript, verified ({took['export_s']:.1f} s)")
    return took

def visit_order(rounds: int, seed: int) -> list[str]:
    """`rounds` shuffled passes over every page, no page twice in a row (nor across a round's boundary)."""
    rng, order = random.Random(seed), []
    for _ in range(rounds):
        while True:
            batch = rng.sample(TITLES, len(TITLES))
            if (not order or batch[0] != order[-1]) and all(a != b for a, b in zip(batch, batch[1:])):
                break
        order += batch
    return order

def errors_on(page, title: str) -> list[str]:
    """Exceptions on the page, and a title that is not the page's (the switch timed the wrong page)."""
    found = [f"{title}: {e.inner_text()[:300]}" for e in page.locator('[data-testid="stException"]').all()]
    h1 = page.locator("h1").first.inner_text() if page.locator("h1").count() else ""
    if not h1.startswith(H1.get(title, title)):
        found.append(f"{title}: the page shows the title {h1!r}")
    return found

def measure(rounds: int, epochs: int, compare: bool, per_class: int, seed: int, presses_n: int = 3) -> dict:
    from playwright.sync_api import sync_playwright

    import load

    work = Path(tempfile.mkdtemp(prefix="vislab-pages-"))
    home = fresh_home(work)
    result = {"errors": []}
    start = time.perf_counter()
    proc, url, server_log = load.serve(home, None)
    result["cold"] = {"server_healthy_s": time.perf_counter() - start}
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=browser.CHROMIUM, headless=True, args=browser.CHROMIUM_ARGS)
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(180_000)
            runs = Runs(page)
            page.goto(url)
            page.get_by_text("Strategy advisor").wait_for()
            result["cold"]["home_first_text_s"] = time.perf_counter() - start
            page.get_by_text(re.compile("Real pretrained weights on this machine|No pretrained weights found"))\
                .first.wait_for()
            settle(page, runs, start)
            result["cold"]["home_complete_s"] = time.perf_counter() - start
            log(f"cold server: healthy {result['cold']['server_healthy_s']:.1f} s, Home complete "
                f"{result['cold']['home_complete_s']:.1f} s")
            result["build"] = build_lab(page, runs, epochs, compare, per_class)

            first, warm, sequence = {}, {t: [] for t in TITLES}, []
            for title in TITLES:  # the first visit of each page after the lab was built
                first[title] = switch(page, runs, title)
                sequence.append([title, round(first[title], 3), "first"])
                log(f"first  {title:<20} {first[title]:6.2f} s")
                result["errors"] += errors_on(page, title)
            for title in visit_order(rounds, seed):
                s = switch(page, runs, title)
                warm[title].append(s)
                sequence.append([title, round(s, 3), "warm"])
                log(f"warm   {title:<20} {s:6.2f} s")
                result["errors"] += errors_on(page, title)
            # the Export page's button on a model that did not change since the build's export
            switch(page, runs, "Export & Netron")
            button = page.get_by_role("button", name="Export and verify")
            presses = [act(page, runs, button.click) for _ in range(presses_n)]
            result["export_again_s"] = presses
            log(f"Export and verify again, model unchanged: {', '.join(f'{x:.2f}' for x in presses)} s")
            result["errors"] += errors_on(page, "Export & Netron")
            b.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except Exception:  # noqa: BLE001
            proc.kill()
        server_log.close()
    result["pages"] = {t: {"first_s": first[t], "warm_s": warm[t], "median_s": statistics.median(warm[t]),
                           "p95_s": pct95(warm[t]), "max_s": max(warm[t])} for t in TITLES}
    result["sequence"] = sequence
    return result

def markdown(summary: dict, baseline: dict | None) -> str:
    cold, before = summary["cold"], (baseline or {}).get("pages", {})
    lines = [f"Run {summary['date']} on {summary['machine']}; load average {summary['load_before']} before, "
             f"{summary['load_after']} after (1, 5, 15 min).", "",
             f"Command: `{summary['command']}`", "",
             f"Lab: {summary['lab']}. Each page opened once after building it (first visit), then "
             f"{summary['rounds']} warm visits each in shuffled order; a switch is timed from the click to the "
             "end of the page's script run with no status widget (polled every 50 ms).", "",
             f"Cold server: healthy after {cold['server_healthy_s']:.1f} s, Home's text after "
             f"{cold['home_first_text_s']:.1f} s, Home complete (catalog and weight status, stopped running) after "
             f"{cold['home_complete_s']:.1f} s.", ""]
    cols = ["page", "first visit (s)", *(["warm median before (s)"] if before else []), "warm median (s)",
            "warm p95 (s)", "warm max (s)", "under 1 s"]
    if before:
        lines += [f"Before: run {baseline.get('date')} (`{baseline.get('command')}`), load average "
                  f"{baseline.get('load_before')} before, {baseline.get('load_after')} after.", ""]
    lines += ["| " + " | ".join(cols) + " |",
              "|" + "|".join("---" if c in ("page", "under 1 s") else "---:" for c in cols) + "|"]
    for title, r in summary["pages"].items():
        ok = "yes" if r["median_s"] < 1 and r["p95_s"] < 1 else "no"
        was = f" {before[title]['median_s']:.2f} |" if title in before else (" - |" if before else "")
        lines.append(f"| {title} | {r['first_s']:.2f} |{was} {r['median_s']:.2f} | {r['p95_s']:.2f} | "
                     f"{r['max_s']:.2f} | {ok} |")
    again = summary.get("export_again_s")
    if again:
        was = (baseline or {}).get("export_again_s")
        lines += ["", f"Export & Netron, pressing *Export and verify* again with the model unchanged ({len(again)} "
                      f"times): median {statistics.median(again):.2f} s, max {max(again):.2f} s"
                      + (f" (before: median {statistics.median(was):.2f} s, max {max(was):.2f} s)" if was else "")
                      + "."]
    if summary["errors"]:
        lines += ["", "Errors on the page: " + "; ".join(summary["errors"])]
    return "\n".join(lines) + "\n"

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="warm visits of each page (default 5)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs of the Train page's run (default 1)")
    ap.add_argument("--per-class", type=int, default=20, choices=[20, 40, 60], help="sample images per class")
    ap.add_argument("--no-compare", action="store_true", help="build the lab without a comparison")
    ap.add_argument("--seed", type=int, default=0, help="the shuffled order of the warm visits")
    ap.add_argument("--baseline", default=None, help="an earlier page_switches.json: its medians as a 'before' column")
    ap.add_argument("--out", default=str(ROOT / "bench"))
    args = ap.parse_args(argv)
    reason = browser.why_unavailable()
    if reason:
        print(reason)
        return 2
    load_before = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    result = measure(args.rounds, args.epochs, not args.no_compare, args.per_class, args.seed)
    cmd = ".venv/bin/python bench/page_switches.py" + (" " + shlex.join(argv if argv is not None else sys.argv[1:])
                                             if (argv if argv is not None else sys.argv[1:]) else "")
    summary = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": cmd.strip(),
               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_before": load_before,
               "load_after": " / ".join(f"{x:.2f}" for x in os.getloadavg()), "rounds": args.rounds,
               "lab": f"textile sample {args.per_class}/class, head-only run of {args.epochs} epoch(s) at 64 px"
                      + ("" if args.no_compare else ", a comparison of the 4 default strategies (1 epoch, 64 px)")
                      + ", one TorchScript export", **result}
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    if baseline:  # kept in this run's page_switches.json, so the 'before' column stays readable without that file
        summary["baseline"] = {k: baseline.get(k) for k in ("date", "command", "load_before", "load_after",
                                                            "export_again_s")}
        summary["baseline"]["pages"] = {t: {"median_s": r["median_s"], "p95_s": r["p95_s"]}
                                        for t, r in baseline.get("pages", {}).items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "page_switches.json").write_text(json.dumps(summary, indent=2))
    md = markdown(summary, baseline)
    (out / "page_switches.md").write_text(md)
    print(md)
    return 1 if result["errors"] else 0

if __name__ == "__main__":
    sys.exit(main())
