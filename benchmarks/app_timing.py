"""How fast the workbench feels in a browser: headless Debian Chromium driven by Playwright.

    python benchmarks/app_timing.py [--launches 2] [--cifar DIR] [--analysed RUN] [--sessions 1 4] [--seconds 60]

Prints, in seconds:
  1. launch -> Overview fully rendered (charts drawn, no script running) of `gatescope app` on a copy
     of the shipped default model: cold (the run folder as a fresh checkout has it, without what the
     app stores on disk for it) and warm (the same folder launched again), median of --launches each;
     then warm on the shipped CIFAR-10 model when --cifar DIR gives its data, an ImageFolder root with
     test/<class>/*.jpg, e.g. the real test set:
         mkdir -p /tmp/cifar10 && tar -xzf ../shared/data/cifar10-jpeg/test.tar.gz -C /tmp/cifar10
  2. the Decision-feature map page of a run with a stored analysis (--analysed RUN; default: the
     shipped model when it has one): click in the sidebar -> map drawn, in a freshly launched app;
  3. each page's render time on a second visit (caches warm);
  4. many users at once: one app, --sessions N browser contexts (1, then 4) driven concurrently, each
     with the Pruning page in one tab and Decision paths in another, for --seconds: alternately a
     slider step (an arrow key -> "Counted MACs (evaluated)" shows the new target's value) and an
     input switch (type an index, Enter -> the Clean column's "Prediction (label ...)" shows that
     input's class); p50/p95 to the readout and to the page's script finished, side by side.
     Every session uses values no other one uses (its own band of slider targets, its own classes
     of inputs) and checks after each step that its pages show them; a violation (or a step that
     never shows its value, or an exception on a page) makes the script exit with status 1.

Run folders are copied into a temporary folder, so the app writes nothing into the checkout. The
slider bands assume the shipped model, whose evaluated readout is 1 - target (to 0.1 pt) for
targets from 0.58 up.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RUN = REPO / "assets" / "mnist5k" / "dynamic"
CIFAR_RUN = REPO / "assets" / "cifar10" / "dynamic"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1600}
PAGES = {  # nav title -> what shows the page is there (the Overview's title names the model)
    "Overview": "text=Mask utilisation", "Decision paths": "h1:has-text('Decision paths')",
    "Decision-feature map": "h1:has-text('Decision-feature map')", "Detection": "h1:has-text('Detection')",
    "Pruning": "h1:has-text('Pruning')",
}
# No script running: the app's root says so. (Its status widget never shows: `gatescope app` starts
# Streamlit with --client.toolbarMode minimal, which hides it.)
IDLE = "() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === 'notRunning'"
# Every chart drawn: plotly's bundle loads lazily, after the script; until it has, each chart is a
# placeholder skeleton, not yet a stPlotlyChart (so "every stPlotlyChart has its svg" alone holds too early).
DRAWN = ("() => (" + IDLE + ")() && !document.querySelector('[data-testid=\"stSkeleton\"]') && "
         "[...document.querySelectorAll('[data-testid=\"stPlotlyChart\"]')].every(c => c.querySelector('.main-svg'))")
TIMEOUT_MS = 300_000
# Slider bands: 4 targets 0.01 apart (one arrow key each), 0.05 between band starts, the first at
# 0.58, where the shipped model's evaluated MACs start to follow the target (below, it already uses
# less); the default value, 0.67, is in none.
FIRST_TARGET, BAND, BAND_GAP, LAST_TARGET = 0.58, 4, 0.05, 0.95
MACS_METRIC = "Counted MACs (evaluated)"
READOUT = ("() => { const m = [...document.querySelectorAll('[data-testid=\"stMetric\"]')].find(e => "
           f"e.innerText.includes('{MACS_METRIC}')); return m ? parseFloat(m.querySelector("
           "'[data-testid=\"stMetricValue\"]').innerText) : null; }")  # percent
LABEL = ("() => { const m = [...document.querySelectorAll('[data-testid=\"stMetric\"]')].find(e => "
         "e.innerText.startsWith('Prediction (label ')); if (!m) return null; "
         "const t = m.innerText.slice('Prediction (label '.length); return t.slice(0, t.indexOf(')')); }")
SHOWS_LABEL = "(want) => (" + LABEL + ")() === want"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(port: int, log, runs=(), data=()) -> subprocess.Popen:
    """`gatescope app [runs] --data NAME=DIR...` in a process group of its own (see :func:`_stop`)."""
    return subprocess.Popen([sys.executable, "-m", "app.cli", "app", *map(str, runs), "--port", str(port),
                             *(a for d in data for a in ("--data", d))],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(server: subprocess.Popen) -> None:
    """End the app and whatever it started (an analysis job is a child process)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        try:
            server.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _wait_health(port: int, deadline: float, server: subprocess.Popen | None = None) -> None:
    while time.time() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the app exited with status {server.returncode} before answering")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError("the app did not answer its health check")


@contextmanager
def _serving(log, runs=(), data=()):
    """The app on a free loopback port; yields its URL once it answers; stops it however the block ends."""
    port = _free_port()
    server = _launch(port, log, runs, data)
    try:
        _wait_health(port, time.time() + 120, server)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(server)


def _rendered(page) -> None:
    """Wait until no script is running and every chart on the page is drawn. After a click, first wait
    for something of the new page: until the click's rerun starts, the old page looks finished."""
    page.wait_for_function(DRAWN, timeout=TIMEOUT_MS)


def _median(xs: list[float]) -> str:
    return f"{statistics.median(xs):.1f} s (median of {len(xs)}: {', '.join(f'{x:.1f}' for x in xs)})"


# 1. Launches


def _checkout_copy(run: Path, dest: Path) -> Path:
    """The files git tracks in ``run`` (what a fresh checkout has, nothing the app or an analysis
    wrote since), copied to ``dest``."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--", str(run.relative_to(REPO))],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    files = [REPO / f for f in listed if f]
    if not files:
        raise FileNotFoundError(f"{run}: git tracks no files there")
    for file in files:
        (dest / file.relative_to(run)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest / file.relative_to(run))
    return dest


def _listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def _written(before: dict, after: dict) -> str:
    """What the app wrote into a run folder (files new or changed), by top-level folder."""
    changed = [f for f in after if before.get(f) != after[f]]
    if not changed:
        return ""
    parts = {}
    for f in changed:
        top = f.split(os.sep)[0] + (os.sep if os.sep in f else "")
        n, size = parts.get(top, (0, 0))
        parts[top] = (n + 1, size + after[f][0])
    return ", ".join(f"{top} ({n} files, {size / 1e6:.2f} MB)" for top, (n, size) in parts.items())


@contextmanager
def _overview(browser, url: str):
    """A new browser context's page on ``url``, once its Overview is rendered; closed after the block."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(url)
        page.wait_for_selector(PAGES["Overview"], timeout=TIMEOUT_MS)
        _rendered(page)
        yield page
    finally:
        context.close()


def _to_overview(browser, runs, data, log) -> float:
    """Seconds from starting `gatescope app` to its Overview rendered in a new browser context."""
    t0 = time.perf_counter()
    with _serving(log, runs, data) as url, _overview(browser, url):
        return time.perf_counter() - t0


def _cold_and_warm(browser, run: Path, data, launches: int, colds: int, tmp: Path, log) -> tuple[list, list, str]:
    """Launch timings of ``run``: ``launches`` warm launches, the first ``colds`` of them each after a
    cold launch on a fresh checkout copy; and what a cold launch wrote into the run folder."""
    cold, warm, written = [], [], ""
    for k in range(launches):
        if k < colds:
            copy = _checkout_copy(run, Path(tempfile.mkdtemp(prefix=f"{run.parent.name}-", dir=tmp)) / run.name)
            before = _listing(copy)
            cold.append(_to_overview(browser, [copy], data, log))
            written = _written(before, _listing(copy))
        warm.append(_to_overview(browser, [copy], data, log))
    return cold, warm, written


def _print_launches(name: str, cold: list, warm: list, written: str) -> None:
    print(f"1. launch -> Overview rendered, {name}:")
    cache = (f"the app's on-disk cache of the run is cleared: its cold launch wrote {written} into the run folder"
             if written else "the app wrote nothing to disk for the run, so cold and warm differ only by the OS "
                             "file cache (and what the first launch left in it)")
    print(f"   cold {_median(cold)}; {cache}")
    print(f"   warm {_median(warm)}, the same folder launched again", flush=True)


# 2. The map page


def _stored_analysis(run: Path) -> bool:
    """Whether ``run`` holds a stored analysis (the clean decision features) for its current weights."""
    from analysis.store import AnalysisStore
    from models import load_run

    return "clean" in AnalysisStore(load_run(run)).names()


def _map_seconds(browser, run: Path, log) -> float:
    """Seconds from clicking the Decision-feature map page, the Overview rendered, to its map drawn."""
    with _serving(log, [run]) as url, _overview(browser, url) as page:
        t0 = time.perf_counter()
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Decision-feature map").click()
        page.wait_for_selector(".st-key-umap .main-svg", timeout=TIMEOUT_MS)
        _rendered(page)
        return time.perf_counter() - t0


# 3. Pages on a second visit


def _second_visits(browser, url: str) -> None:
    page = browser.new_page(viewport=VIEWPORT)
    page.goto(url)
    page.wait_for_selector(PAGES["Overview"], timeout=TIMEOUT_MS)
    _rendered(page)
    for visit in (1, 2):
        for title, ready in PAGES.items():
            t0 = time.perf_counter()
            page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
            page.wait_for_selector(ready, timeout=TIMEOUT_MS)
            _rendered(page)
            if visit == 2:
                print(f"3. {title:22s} second visit: {time.perf_counter() - t0:.2f} s", flush=True)
    page.close()


# 4. Many sessions at once


@dataclass
class _Session:
    number: int
    targets: list[float]  # its band of slider targets
    classes: list[int]  # the classes of the inputs it opens
    times: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (to readout, to finished)
    checks: int = 0
    violations: list[str] = field(default_factory=list)  # its page showed another value than its own
    problems: list[str] = field(default_factory=list)  # time-outs and exceptions on a page
    console_errors: list[str] = field(default_factory=list)  # and failed loads


NEW, SEEN, SWITCH = "slider step, new target", "slider step, seen target", "input switch"


def _bands(count: int) -> list[list[float]]:
    """``count`` disjoint bands of slider targets, the middle one first, then outwards: each phase's
    sessions take bands around the middle of the range (an evaluation costs more at higher targets)."""
    bands = [[round(FIRST_TARGET + k * BAND_GAP + j / 100, 2) for j in range(BAND)] for k in range(count)]
    if bands[-1][-1] > LAST_TARGET:
        fit = int((LAST_TARGET - FIRST_TARGET - (BAND - 1) / 100) / BAND_GAP) + 1
        raise SystemExit(f"--sessions: {count} sessions in all need {count} slider bands; {fit} fit in the range")
    return [b for _, b in sorted(enumerate(bands), key=lambda kb: abs(kb[0] - (count - 1) / 2))]


def _shows(readout: float | None, target: float) -> bool:
    """Whether the readout (percent) shows ``target`` on the shipped model: 1 - target within 0.45 pt."""
    return readout is not None and abs(readout - (1 - target) * 100) <= 0.45


async def _slider_to(page, current: float, target: float) -> tuple[float, float]:
    """Arrow keys from ``current`` to ``target``; seconds to the readout showing it, and to no script running."""
    thumb = page.locator(".st-key-mask_target input[type=range]")
    await thumb.focus()
    t0 = time.perf_counter()
    for _ in range(round(abs(target - current) * 100)):  # presses in a row reach the app as one change
        await page.keyboard.press("ArrowRight" if target > current else "ArrowLeft")
    await page.wait_for_function(f"(t) => {{ const v = ({READOUT})(); return v !== null && Math.abs(v - (1 - t) * 100)"
                                 " <= 0.45; }", arg=target, timeout=TIMEOUT_MS)
    t1 = time.perf_counter()
    await page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
    return t1 - t0, time.perf_counter() - t0


async def _switch_to(page, index: int, name: str) -> tuple[float, float]:
    """Type ``index`` into Decision paths' input box; seconds to its class ``name`` shown, and to no script running."""
    box = page.locator(".st-key-index input")
    await box.fill(str(index))
    t0 = time.perf_counter()
    await box.press("Enter")
    await page.wait_for_function(SHOWS_LABEL, arg=name, timeout=TIMEOUT_MS)
    t1 = time.perf_counter()
    await page.wait_for_function(IDLE, timeout=TIMEOUT_MS)
    return t1 - t0, time.perf_counter() - t0


async def _check(s: _Session, page, ok: bool, what: str) -> None:
    """Count one check of ``page`` after a step (``ok``: it shows the session's own values, ``what``)."""
    s.checks += 1
    if not ok:
        s.violations.append(f"session {s.number}: {what}")
    if await page.locator('[data-testid="stException"]').count():
        text = await page.locator('[data-testid="stException"]').first.inner_text()
        s.problems.append(f"session {s.number}: exception on the page after {what}: {text[:300]}")


def _probe(url: str) -> bool:
    """Whether ``url`` is Streamlit looking for its server under a page's path (/pruning/_stcore/health):
    opened at a page's URL, it tries that before the root, and the 404 is expected."""
    path = urlparse(url).path
    return path.count("/") > 2 and path.rsplit("/", 2)[-2:] in (["_stcore", "health"], ["_stcore", "host-config"])


async def _open(browser, url: str, s: _Session):
    """The session's browser context with Pruning and Decision paths in a tab each, rendered, its slider
    moved to its band (untimed); None when that failed (then said in its problems)."""
    context = await browser.new_context(viewport=VIEWPORT)
    try:
        pruning, paths = await context.new_page(), await context.new_page()
        for page in (pruning, paths):  # a failed load names its URL in the response, not in the console
            page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource")
                    and s.console_errors.append(m.text))
            page.on("response", lambda r: r.status >= 400 and not _probe(r.url)
                    and s.console_errors.append(f"HTTP {r.status} {r.url}"))
        # eight pages loading at once wait on one busy server: Playwright's 30 s default was seen to run out
        await pruning.goto(f"{url}/pruning", timeout=TIMEOUT_MS)
        await paths.goto(f"{url}/paths", timeout=TIMEOUT_MS)
        await pruning.wait_for_selector(f"text={MACS_METRIC}", timeout=TIMEOUT_MS)
        await pruning.wait_for_function(IDLE, timeout=TIMEOUT_MS)
        await paths.wait_for_selector(".st-key-index input", timeout=TIMEOUT_MS)
        await paths.wait_for_function(IDLE, timeout=TIMEOUT_MS)
        current = float(await pruning.locator(".st-key-mask_target input[type=range]").input_value())
        await _slider_to(pruning, current, s.targets[0])
        return context, pruning, paths
    except Exception as e:  # Playwright's Error or TimeoutError: this session is not measured
        s.problems.append(f"session {s.number}, opening its pages: {type(e).__name__}: {str(e).splitlines()[0]}")
        await context.close()
        return None


async def _drive(s: _Session, pruning, paths, inputs: dict[int, list[int]], names: list[str], seconds: float) -> None:
    """Alternately a slider step (walking the session's band up and down) and an input switch (the next
    unused input of its next class), for ``seconds``, each followed by its check."""
    walk = itertools.cycle([*range(1, BAND), *range(BAND - 2, -1, -1)])  # band positions 1 2 3 2 1 0 1 ...
    classes, unused = itertools.cycle(s.classes), {c: iter(inputs[c]) for c in s.classes}
    current, label, visited = s.targets[0], await paths.evaluate(LABEL), {s.targets[0]}
    thumb, box = pruning.locator(".st-key-mask_target input[type=range]"), paths.locator(".st-key-index input")
    deadline = time.perf_counter() + seconds
    step = ""
    try:
        while time.perf_counter() < deadline:
            target = s.targets[next(walk)]
            step = f"Pruning, slider {current} -> {target}"
            timed = await _slider_to(pruning, current, target)
            s.times.setdefault(SEEN if target in visited else NEW, []).append(timed)
            current = target
            visited.add(target)
            value, readout = float(await thumb.input_value()), await pruning.evaluate(READOUT)
            await _check(s, pruning, value == target and _shows(readout, target),
                         f"{step}: slider {value}, readout {readout}% (its own: {(1 - target) * 100:.1f}%)")
            if time.perf_counter() >= deadline:
                break
            cls = next(c for c in classes if names[c] != label)  # a class other than the one shown
            index, label = next(unused[cls]), names[cls]
            step = f"Decision paths, input {index} (class {label})"
            s.times.setdefault(SWITCH, []).append(await _switch_to(paths, index, label))
            shown = (await box.input_value(), parse_qs(urlparse(paths.url).query).get("index", [""])[0],
                     await paths.evaluate(LABEL))
            await _check(s, paths, shown == (str(index), str(index), label),
                         f"{step}: input box {shown[0]}, URL index {shown[1]}, class {shown[2]}")
    except Exception as e:  # a step that never showed its value ends this session's measurement
        s.problems.append(f"session {s.number}, {step}: {type(e).__name__}: {str(e).splitlines()[0]}")


async def _phase(url: str, sessions: list[_Session], inputs, names, seconds: float) -> None:
    """Open every session's pages, then drive them all at once for ``seconds``."""
    # Coroutines on one asyncio loop drive one browser through Playwright's async API, a context per
    # session. Playwright's sync objects belong to the thread that made them, so threads would need a
    # sync_playwright each: a Node driver and a Chromium per thread, competing with the app for the
    # same two cores. One browser with a context per user is Playwright's own way to isolate users.
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        opened = await asyncio.gather(*(_open(browser, url, s) for s in sessions))
        await asyncio.gather(*(_drive(s, pruning, paths, inputs, names, seconds)
                               for s, (_, pruning, paths) in ((s, o) for s, o in zip(sessions, opened) if o)))
        for o in filter(None, opened):
            await o[0].close()
        await browser.close()


def _test_inputs(run: Path) -> tuple[dict[int, list[int]], list[str]]:
    """The run's test inputs by class (input 0, the page's first, left out) and its class names."""
    from analysis.datasets import load_run_dataset
    from models import read_meta

    meta = read_meta(run)
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(load_run_dataset(meta, "test").dataset):
        if i:
            by_class.setdefault(int(y), []).append(i)
    return by_class, list(meta.class_names)


def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    k = (len(xs) - 1) * q
    lo = math.floor(k)
    return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (k - lo)


def _print_sessions(phases: dict[int, list[_Session]], names: list[str], seconds: float) -> None:
    sizes = list(phases)
    print(f"4. concurrent sessions on one app, each {seconds:.0f} s of alternate slider steps (Pruning tab) and "
          f"input switches (Decision paths tab); seconds from the key press (Enter) to the readout / to the "
          f"page's script finished: p50 / p95 (n steps)")
    for n, sessions in phases.items():
        print(f"   {n} session{'s' * (n > 1)}: slider bands " + ", ".join(
            f"{s.targets[0]:.2f}-{s.targets[-1]:.2f}" for s in sessions) + "; classes of inputs " + ", ".join(
            "/".join(names[c] for c in s.classes) for s in sessions))
    header = "".join(f"{f'{n} session' + 's' * (n > 1):>26s}" for n in sizes)
    ratio = f"   {sizes[-1]}/{sizes[0]} p50, p95" if len(sizes) > 1 else ""
    print(f"   {'':34s}{header}{ratio}")
    for kind in (NEW, SEEN, SWITCH):
        for part, name in ((0, "readout"), (1, "finished")):
            cells, stats = [], []
            for sessions in phases.values():
                xs = [t[part] for s in sessions for t in s.times.get(kind, [])]
                stats.append((_percentile(xs, 0.5), _percentile(xs, 0.95)) if xs else None)
                cells.append(f"{stats[-1][0]:.2f} / {stats[-1][1]:.2f} (n={len(xs)})" if xs else "none")
            line = f"   {kind + ' -> ' + name:34s}" + "".join(f"{c:>26s}" for c in cells)
            if len(sizes) > 1 and stats[0] and stats[-1]:
                line += f"   x{stats[-1][0] / stats[0][0]:.1f}, x{stats[-1][1] / stats[0][1]:.1f}"
            print(line)


def _report_isolation(phases: dict[int, list[_Session]]) -> bool:
    """Print the isolation checks and problems; True when all is well."""
    sessions = [s for group in phases.values() for s in group]
    violations = [v for s in sessions for v in s.violations]
    problems = [p for s in sessions for p in s.problems]
    console = [e for s in sessions for e in s.console_errors]
    print(f"   no session saw another's state: {len(violations)} violations in {sum(s.checks for s in sessions)} "
          f"checks (after each step: its slider value and readout; its input index, the URL's and the class "
          f"shown); {len(problems)} problems; {len(console)} browser console errors and failed loads")
    for line in violations[:20] + problems[:20]:
        print(f"   ! {line}")
    for line in console[:5]:
        print(f"   (browser) {line}")
    return not violations and not problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=2, help="cold and warm launches of each model (default: 2)")
    parser.add_argument("--cifar", type=Path, metavar="DIR",
                        help="a CIFAR-10 ImageFolder root (DIR/test/<class>/*.jpg) for the CIFAR-10 launch")
    parser.add_argument("--analysed", type=Path, metavar="RUN",
                        help="a run with a stored analysis, for the map page (default: the shipped model, if it "
                             "has one)")
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4],
                        help="concurrent sessions, one phase each (default: 1 4)")
    parser.add_argument("--seconds", type=float, default=60, help="how long each session runs (default: 60)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed (e.g. by timeout): still stop the apps
    bands = iter(_bands(sum(args.sessions)))
    log = tempfile.NamedTemporaryFile("w", suffix=".log", prefix="app-timing-", delete=False)
    tmp = Path(tempfile.mkdtemp(prefix="gatescope-app-timing-"))
    print(f"app output in {log.name}", flush=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            _launches(browser, args, tmp, log)
            _map_page(browser, args.analysed, log)
            browser.close()
        run = _checkout_copy(DEFAULT_RUN, tmp / "sessions" / DEFAULT_RUN.name)
        inputs, names = _test_inputs(run)
        if max(args.sessions) > len(inputs) // 2:
            raise SystemExit(f"--sessions: at most {len(inputs) // 2} (each session needs two classes of its own)")
        phases = {}
        with _serving(log, [run]) as url:
            with sync_playwright() as pw:  # closed first: the async API cannot run inside the sync one
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                _second_visits(browser, url)  # also fills the app's shared caches before the sessions
                browser.close()
            for n in args.sessions:
                phases[n] = [_Session(i, next(bands), [c for c in sorted(inputs) if c % n == i]) for i in range(n)]
                asyncio.run(_phase(url, phases[n], inputs, names, args.seconds))
        _print_sessions(phases, names, args.seconds)
        ok = _report_isolation(phases)
    finally:
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if ok else 1)


def _launches(browser, args, tmp: Path, log) -> None:
    _print_launches(f"`gatescope app` on a copy of {DEFAULT_RUN.relative_to(REPO)}",
                    *_cold_and_warm(browser, DEFAULT_RUN, [], args.launches, args.launches, tmp, log))
    if args.cifar is None:
        print("1. CIFAR-10 launch: skipped (give --cifar DIR, a CIFAR-10 ImageFolder root)", flush=True)
        return
    # one cold launch only, to fill the on-disk cache: a cold CIFAR-10 launch evaluates all its test images
    _print_launches(f"CIFAR-10, a copy of {CIFAR_RUN.relative_to(REPO)} with --data cifar10={args.cifar}",
                    *_cold_and_warm(browser, CIFAR_RUN, [f"cifar10={args.cifar}"], args.launches, 1, tmp, log))


def _map_page(browser, analysed: Path | None, log) -> None:
    default = DEFAULT_RUN.relative_to(REPO)
    analysed = analysed or (DEFAULT_RUN if _stored_analysis(DEFAULT_RUN) else None)
    if analysed is None:
        print(f"2. Decision-feature map page after analysis: skipped: {default} has no stored analysis; make one "
              f"with `cp -r {default} /tmp/analysed && gatescope analyze /tmp/analysed` and give --analysed "
              f"/tmp/analysed", flush=True)
        return
    print(f"2. Decision-feature map page after analysis ({analysed}): click -> map drawn, no script running: "
          f"{_map_seconds(browser, analysed, log):.1f} s (one visit, in a freshly launched app)", flush=True)


if __name__ == "__main__":
    main()
