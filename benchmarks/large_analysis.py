"""A large analysis on this machine: every image of a dataset through `gatescope analyze`.

    python benchmarks/large_analysis.py RUN [--split all] [--data NAME=DIR] [--no-browser]

Runs the decision-feature extraction (streamed to disk in chunks) and the UMAP of all points
with no attack (`gatescope analyze RUN --split all --attacks none --force`), then opens the
decision-feature map of that run in headless Chromium. Prints the wall time of each step, the
peak memory (resident set) of this process, and the time from clicking the map page to the map
drawn. For CIFAR-10 (60,000 images): `--data cifar10=DIR` with DIR an ImageFolder or
torchvision copy.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--split", default="all")
    parser.add_argument("--data", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    if args.data:
        from analysis.datasets import DATA_ENV

        os.environ[DATA_ENV] = os.pathsep.join(args.data)
    from analysis.analyze import AnalyzeConfig, analyze
    from models import load_run

    stamps = [("start", time.perf_counter())]
    run = load_run(args.run)
    analyze(run, AnalyzeConfig(split=args.split, attacks=()), force=True,
            log=lambda message: stamps.append((message, time.perf_counter())))
    stamps.append(("done", time.perf_counter()))
    for (what, t0), (_, t1) in zip(stamps, stamps[1:]):
        if what != "start":
            print(f"{what}: {t1 - t0:.1f} s")
    print(f"total {stamps[-1][1] - stamps[0][1]:.1f} s; peak resident memory {_peak_gb():.2f} GB", flush=True)
    if not args.no_browser:
        print(f"decision-feature map page, click -> map drawn: {_map_render_s(args.run):.1f} s")


def _map_render_s(run: Path) -> float:
    from app_timing import CHROMIUM, FLAGS, _free_port, _rendered, _wait_health
    from playwright.sync_api import sync_playwright

    port = _free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".log") as log:
        server = subprocess.Popen([sys.executable, "-m", "app.cli", "app", str(run), "--port", str(port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_health(port, time.time() + 120)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"http://127.0.0.1:{port}")
                page.wait_for_selector("h1", timeout=120_000)
                t0 = time.perf_counter()
                page.locator('[data-testid="stSidebarNavLink"]', has_text="Decision-feature map").click()
                page.wait_for_selector("h1:has-text('Decision-feature map')", timeout=120_000)
                page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=120_000)
                _rendered(page)
                elapsed = time.perf_counter() - t0
                browser.close()
                return elapsed
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
