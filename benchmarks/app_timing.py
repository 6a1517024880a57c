"""How fast the workbench feels in a browser: headless Debian Chromium driven by Playwright.

    python benchmarks/app_timing.py [--launches 3] [--moves 10]

Prints:
  1. launch -> Overview fully rendered (charts drawn, no script running), median of --launches
     fresh `gatescope app` processes on the shipped default model;
  2. each page's render time on a second visit (caches warm);
  3. pruning slider: keyboard move -> the "Counted MACs (evaluated)" readout changes, median of
     --moves moves.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = {  # nav title -> what shows the page is there (the Overview's title names the model)
    "Overview": "text=Mask utilisation", "Decision paths": "h1:has-text('Decision paths')",
    "Decision-feature map": "h1:has-text('Decision-feature map')", "Detection": "h1:has-text('Detection')",
    "Pruning": "h1:has-text('Pruning')",
}
IDLE = "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(port: int, log) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "app.cli", "app", "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)


def _wait_health(port: int, deadline: float) -> None:
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the app did not answer its health check")


def _rendered(page) -> None:
    """Wait until the page's charts are drawn and no script is running."""
    page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg, [data-testid="stAlert"]', timeout=120_000)
    page.wait_for_function(IDLE, timeout=120_000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=3)
    parser.add_argument("--moves", type=int, default=10)
    args = parser.parse_args()
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        first = []
        for _ in range(args.launches):
            port = _free_port()
            t0 = time.perf_counter()
            server = _launch(port, log)
            try:
                _wait_health(port, time.time() + 120)
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"http://127.0.0.1:{port}")
                page.wait_for_selector("text=Mask utilisation", timeout=120_000)
                _rendered(page)
                first.append(time.perf_counter() - t0)
            finally:
                server.terminate()
                server.wait(timeout=30)
        print(f"1. launch -> Overview rendered: median {statistics.median(first):.1f} s "
              f"({', '.join(f'{t:.1f}' for t in first)})", flush=True)

        port = _free_port()
        server = _launch(port, log)
        try:
            _wait_health(port, time.time() + 120)
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.goto(f"http://127.0.0.1:{port}")
            _rendered(page)
            for visit in (1, 2):
                for title, ready in PAGES.items():
                    t0 = time.perf_counter()
                    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
                    page.wait_for_selector(ready, timeout=120_000)
                    _rendered(page)
                    if visit == 2:
                        print(f"2. {title:22s} second visit: {time.perf_counter() - t0:.2f} s", flush=True)

            thumb = page.locator(".st-key-mask_target input[type=range]")
            readout = page.locator('[data-testid="stMetric"]', has_text="Counted MACs (evaluated)").locator(
                '[data-testid="stMetricValue"]')
            moves = []
            for i in range(args.moves):
                before = readout.inner_text()
                thumb.focus()
                t0 = time.perf_counter()
                page.keyboard.press("ArrowRight" if i % 2 == 0 else "ArrowLeft")
                page.wait_for_function(
                    "(b) => { const m = [...document.querySelectorAll('[data-testid=stMetric]')].find(e => "
                    "e.innerText.includes('Counted MACs (evaluated)')); return m && !m.innerText.includes(b); }",
                    arg=before, timeout=30_000)
                moves.append(time.perf_counter() - t0)
                page.wait_for_function(IDLE, timeout=60_000)
            print(f"3. pruning slider move -> MACs readout updated: median {statistics.median(moves):.2f} s "
                  f"over {len(moves)} moves (max {max(moves):.2f} s)")
        finally:
            server.terminate()
            server.wait(timeout=30)
        browser.close()


if __name__ == "__main__":
    main()
