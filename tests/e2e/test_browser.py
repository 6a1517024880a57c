"""The app in a real browser: headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
from contextlib import contextmanager
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import DEFAULT_RUN, REPO
from hostile import REFUSED_BECAUSE, bad_runs, png_header_only

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _serving(log: Path, *runs: Path):
    """`gatescope app [runs]` on a free loopback port; yields its URL once it answers."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("GATESCOPE_RUNS", "GATESCOPE_ROOTS")}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app.cli", "app", *map(str, runs), "--port", str(port)],
                                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.time() > deadline or proc.poll() is not None:
                pytest.fail(f"the app did not start:\n{log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _serving(tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


def _wait_idle(page) -> None:
    page.wait_for_selector('[data-testid="stApp"]', timeout=60_000)
    # no script running, as the app's root says (the status widget never shows: `gatescope app` runs
    # Streamlit with --client.toolbarMode minimal, so waiting for it to vanish waited for nothing)
    page.wait_for_function(
        "() => document.querySelector('[data-testid=\"stApp\"]')?.dataset.testScriptState === 'notRunning'",
        timeout=180_000)


def test_overview_renders_the_default_model_in_chromium(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server)
    _wait_idle(page)
    page.wait_for_selector('[data-testid="stPlotlyChart"]', timeout=120_000)
    text = page.inner_text("body")
    assert "small_cnn on mnist5k" in text
    assert "Mean counted MACs" in text and "Mask utilisation" in text
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.locator('[data-testid="stPlotlyChart"]').count() >= 3
    shot = _shots(tmp_path) / "overview.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert not errors, errors


def test_pruning_slider_reruns_the_search_in_chromium(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server)
    _wait_idle(page)
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Pruning").click()
    page.wait_for_selector("text=Accuracy without retraining", timeout=120_000)
    _wait_idle(page)
    measured = ("() => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => "
                "m.innerText.includes('Measured latency, batch 64') && !m.closest('[data-stale=true]'))")
    page.wait_for_function(measured, timeout=180_000)  # exported and timed in onnxruntime, last in the panel

    def counted() -> str:
        metric = page.locator('[data-testid="stMetric"]', has_text="Counted MACs (evaluated)")
        return metric.locator('[data-testid="stMetricValue"]').inner_text()

    before = counted()
    thumb = page.locator(".st-key-mask_target input[type=range]")  # React Aria slider thumb
    thumb.focus()
    for _ in range(8):  # +0.08 target reduction
        page.keyboard.press("ArrowRight")
    page.wait_for_function(
        "(b) => [...document.querySelectorAll('[data-testid=stMetric]')].some(m => "
        "m.innerText.includes('Counted MACs (evaluated)') && !m.innerText.includes(b))", arg=before, timeout=60_000)
    _wait_idle(page)
    assert float(counted().rstrip("%")) < float(before.rstrip("%"))
    page.wait_for_function(measured, timeout=120_000)  # the new threshold's file, timed
    for batch in (1, 64):  # measured onnxruntime time next to the counted MACs
        latency = page.locator('[data-testid="stMetric"]', has_text=f"Measured latency, batch {batch}")
        assert latency.locator('[data-testid="stMetricValue"]').inner_text().endswith(" ms")
        assert "vs ungated" in latency.inner_text()
    # the file's button follows the latency metrics in the same run; the browser may show them first
    page.locator(".st-key-export_onnx_mask button").wait_for(timeout=60_000)
    assert page.locator(".st-key-export_onnx_mask button").count() == 1
    assert page.locator('[data-testid="stException"]').count() == 0
    shot = _shots(tmp_path) / "pruning.png"
    page.screenshot(path=str(shot), full_page=True)
    assert not errors, errors


def _shots(tmp_path) -> Path:
    folder = Path(os.environ.get("GATESCOPE_SCREENSHOTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots in {folder}")
    return folder


@pytest.mark.parametrize("title,ready", [("Decision paths", "text=Why this decision"),
                                         ("Decision-feature map", "h1:has-text('Decision-feature map')"),
                                         ("Detection", "h1:has-text('Detection')")])
def test_every_page_renders_in_chromium(server, browser, tmp_path, title, ready):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(server)
    _wait_idle(page)
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
    # the first visit of a page in a fresh server imports its modules (captum, umap): CI measured > 120 s
    page.wait_for_selector(ready, timeout=300_000)
    # without RUN/analysis the map and detection pages say how to compute it; with it they show it
    page.wait_for_selector('[data-testid="stAlert"], [data-testid="stPlotlyChart"]', timeout=120_000)
    _wait_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(_shots(tmp_path) / f"{title.lower().replace(' ', '-')}.png"), full_page=True)
    assert not errors, errors


def test_uploads_are_refused_or_converted_in_chromium(server, browser, tmp_path):
    """Each bad image kind gets its reason inside the page, and the page stays usable."""
    import io

    from PIL import Image

    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(server)
    _wait_idle(page)
    page.locator('[data-testid="stSidebarNavLink"]', has_text="Decision paths").click()
    page.wait_for_selector("text=Why this decision", timeout=120_000)
    page.locator(".st-key-pick").get_by_text("upload", exact=True).click()
    uploader = page.locator('.st-key-upload [data-testid="stFileUploaderDropzoneInput"]')
    uploader.wait_for(state="attached", timeout=60_000)
    bad_kinds = {
        "notes.png": (b"this is not a picture", "not a readable image"),
        "bomb.png": (png_header_only(100_000, 100_000), "decompression bomb"),
        "huge.png": (b"\x89PNG" + b"\x00" * (9 * 2**20), "8.0MB or smaller"),  # Streamlit's own upload cap
    }
    for name, (content, reason) in bad_kinds.items():
        (tmp_path / name).write_bytes(content)
        uploader.set_input_files(str(tmp_path / name))
        page.wait_for_selector(f"text={reason}", timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0, name
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (255, 255, 255)).save(buf, format="PNG")
    good = tmp_path / "white.png"
    good.write_bytes(buf.getvalue())
    uploader.set_input_files(str(good))
    page.wait_for_selector("text=resized from 64x64 to 28x28", timeout=60_000)
    page.wait_for_selector("text=Why this decision", timeout=60_000)
    _wait_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(_shots(tmp_path) / "upload.png"), full_page=True)


def _upload(page, key: str, file: Path, tries: int = 3, *, or_text: str | None = None) -> None:
    """Put ``file`` into the uploader ``key`` and wait until it lists it (or until ``or_text`` shows:
    a complete run upload is taken and its uploaders emptied at once): an upload made while the
    page reruns after the previous one can be dropped by the browser, so it is retried."""
    uploader = page.locator(f'.st-key-{key} [data-testid="stFileUploaderDropzoneInput"]')
    for _ in range(tries):
        _wait_idle(page)
        uploader.set_input_files(str(file))
        try:
            listed = page.locator(f".st-key-{key}").get_by_text(file.name, exact=True)
            (listed.or_(page.get_by_text(or_text)) if or_text else listed).first.wait_for(timeout=15_000)
            return
        except Exception:  # Playwright's TimeoutError: try again
            continue
    pytest.fail(f"{file.name} never showed in the {key} uploader")


def test_uploaded_runs_are_checked_in_chromium(server, browser, tmp_path):
    """Each bad run-upload kind gets its reason inside the page; then a good one is added."""
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    marker = tmp_path / "payload-ran"
    for i, (kind, (name, weights_data, meta_data)) in enumerate(bad_runs(marker).items()):
        if kind == "random .pt":
            continue  # same path through the page as the pickle payload
        page.goto(server)  # a fresh session per kind: empty uploaders
        _wait_idle(page)
        page.get_by_text("Open an uploaded run").click()
        folder = tmp_path / f"kind{i}"
        folder.mkdir()
        (folder / f"{i}-{name}").write_bytes(weights_data)
        (folder / f"model-{i}.json").write_bytes(meta_data)
        _upload(page, "upload_weights", folder / f"{i}-{name}")
        _upload(page, "upload_meta", folder / f"model-{i}.json", or_text="This upload is not a usable run")
        reason = REFUSED_BECAUSE[kind].split("|")[0]
        page.wait_for_selector("text=This upload is not a usable run", timeout=60_000)
        page.wait_for_selector(f"text={reason}", timeout=60_000)
        assert page.locator('[data-testid="stException"]').count() == 0, kind
    assert not marker.exists()
    _upload(page, "upload_weights", DEFAULT_RUN / "model.safetensors")
    _upload(page, "upload_meta", DEFAULT_RUN / "model.json", or_text="Uploaded run added to the Run list")
    page.wait_for_selector("text=Uploaded run added to the Run list", timeout=60_000)
    _wait_idle(page)
    page.screenshot(path=str(_shots(tmp_path) / "upload-run.png"), full_page=True)



def test_a_dynamic_pruning_checkpoint_uploads_and_opens_in_chromium(server, browser, tmp_path):
    """The papers' checkpoint.pth.tar, uploaded with its format and architecture, is imported and opens."""
    import torch

    from reference_code import reference

    file = tmp_path / "checkpoint.pth.tar"
    torch.save({"epoch": 9, "state_dict": reference("resnet20", k=5).state_dict()}, file)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(server)
    _wait_idle(page)
    page.get_by_text("Open an uploaded run").click()
    page.locator(".st-key-upload_format").get_by_text("dynamic-pruning", exact=True).click()
    _wait_idle(page)
    page.locator(".st-key-upload_arch").get_by_text("resnet20", exact=True).click()
    page.locator(".st-key-upload_official").wait_for(timeout=60_000)  # shown once the format is chosen
    _wait_idle(page)
    _upload(page, "upload_official", file)
    page.wait_for_selector("text=Imported dynamic-pruning resnet20 added to the Run list", timeout=120_000)
    _wait_idle(page)
    page.locator('.st-key-run [role="combobox"]').click()  # a react-aria combobox
    page.get_by_role("option").filter(has_text="gatescope-uploads").click()
    page.wait_for_selector("text=ref_resnet20 on cifar10", timeout=120_000)
    _wait_idle(page)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert "dynamic-pruning" in page.inner_text("body")
    page.screenshot(path=str(_shots(tmp_path) / "upload-official.png"), full_page=True)


def test_lasso_on_the_decision_feature_map_in_chromium(browser, analysed_run, tmp_path):
    with _serving(tmp_path / "server.log", analysed_run) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        _wait_idle(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Decision-feature map").click()
        chart = page.locator('[data-testid="stPlotlyChart"]').first
        chart.wait_for(timeout=120_000)
        _wait_idle(page)
        box = page.locator('[data-testid="stPlotlyChart"] .nsewdrag').first.bounding_box()
        x0, y0, w, h = box["x"], box["y"], box["width"], box["height"]
        page.mouse.move(x0 + 0.05 * w, y0 + 0.05 * h)  # a lasso around (nearly) the whole plot
        page.mouse.down()
        for fx, fy in ((0.95, 0.05), (0.95, 0.95), (0.05, 0.95), (0.05, 0.06)):
            page.mouse.move(x0 + fx * w, y0 + fy * h, steps=8)
        page.mouse.up()
        page.wait_for_selector("h3:has-text('selected')", timeout=60_000)
        page.wait_for_selector("[data-testid='stMain'] img, [data-testid='stException']", timeout=90_000)
        _wait_idle(page)
        page.screenshot(path=str(_shots(tmp_path) / "lasso.png"), full_page=True)
        heading = page.locator("h3:has-text('selected')").inner_text()
        assert int(heading.split()[0]) > 50
        assert page.locator("img").count() >= 1, "thumbnails of the selected inputs"
        assert page.locator('[data-testid="stException"]').count() == 0
        # an attacked point (not input 0, the page's default) opens on Decision paths with its stored example
        page.locator(".st-key-open_point").click()
        page.keyboard.type("pgd #")  # the select filters its options as one types
        options = page.get_by_role("option")
        options.first.wait_for(timeout=30_000)
        texts = options.all_inner_texts()
        pick = next(i for i, t in enumerate(texts) if not t.startswith("clean") and " #0 " not in t)
        options.nth(pick).click()
        _wait_idle(page)
        link = page.locator('[data-testid="stPageLink"] a', has_text="on Decision paths")
        page.wait_for_function("(t) => document.querySelector('[data-testid=\"stPageLink\"] a').innerText.includes(t)",
                               arg=texts[pick].split(" (")[0], timeout=60_000)
        kind, source = link.inner_text().removeprefix("Open ").split(" on ")[0].split(" #")
        link.click()
        page.wait_for_selector("text=Why this decision", timeout=120_000)
        _wait_idle(page)
        page.screenshot(path=str(_shots(tmp_path) / "lasso-opened.png"), full_page=True)
        assert page.locator(".st-key-index input").input_value() == source
        assert f"index={source}" in page.url
        assert kind != "clean" and source != "0"
        assert page.locator(".st-key-stored input").is_checked()
        assert f"attack={kind}" in page.url and page.locator(".st-key-attack input").input_value() == kind
        assert page.locator('[data-testid="stException"]').count() == 0
        assert not errors, errors


def test_the_detection_audit_in_chromium(browser, analysed_run, tmp_path):
    """The analysed run's Detection page: the AUC grid, oblivious vs adaptive, transfer and the
    compute attack all drawn, no exception, no console error; a screenshot per screen."""
    with _serving(tmp_path / "server.log", analysed_run) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        errors = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        _wait_idle(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Detection").click()
        page.wait_for_selector("h3:has-text('Compute as an attack surface')", timeout=120_000)
        _wait_idle(page)
        for heading in ("ROC-AUC per attack and detector", "Every detector attacked: oblivious vs adaptive pgd",
                        "Known, unknown and transfer attacks"):
            assert page.locator(f"h3:has-text('{heading}')").count() == 1, heading
        # grid, adaptive, ROC, layers, transfer, MACs: plotly's bundle loads lazily, after the headings
        page.wait_for_function("() => document.querySelectorAll('[data-testid=\"stPlotlyChart\"]').length >= 6",
                               timeout=120_000)
        assert page.locator('[data-testid="stException"]').count() == 0
        main = page.locator('[data-testid="stMain"]')
        height = main.evaluate("m => m.scrollHeight")
        for i, top in enumerate(range(0, height, 1100)):
            main.evaluate(f"m => m.scrollTo(0, {top})")
            page.wait_for_timeout(300)
            page.screenshot(path=str(_shots(tmp_path) / f"detection-{i}.png"))
        assert not errors, errors


def test_a_fresh_copy_of_the_default_shows_every_page_within_a_minute(browser, tmp_path):
    """First launch on a fresh copy of the shipped default (its analysis shipped with it): every page
    has real content (a chart) within 60 s of starting the app."""
    import shutil

    run = tmp_path / "copy" / "dynamic"
    shutil.copytree(DEFAULT_RUN, run)
    started = time.time()
    with _serving(tmp_path / "server.log", run) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(url)
        ready = {"Overview": "text=Mask utilisation", "Decision paths": "text=Why this decision",
                 "Decision-feature map": "h1:has-text('Decision-feature map')",
                 "Detection": "h3:has-text('ROC-AUC per attack and detector')", "Pruning": "h1:has-text('Pruning')"}
        for title, selector in ready.items():
            if title != "Overview":
                page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()
            left_ms = max(1_000, int((started + 60 - time.time()) * 1000))
            page.wait_for_selector(selector, timeout=left_ms)
            page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=max(1_000, left_ms))
            assert page.locator('[data-testid="stException"]').count() == 0, title
            assert page.locator("text=not stored for this run yet").count() == 0, title
        print(f"every page drawn {time.time() - started:.1f} s after the launch")
        assert time.time() - started < 60


def test_an_analysis_started_in_chromium_draws_the_map_when_done(browser, tmp_path):
    """The map page of a run without analysis: choose a quick analysis in the form, start it, see
    its progress, and the map appears when it ends (no reload, no restart)."""
    import shutil

    run = tmp_path / "fresh" / "dynamic"
    shutil.copytree(DEFAULT_RUN, run, ignore=shutil.ignore_patterns("analysis"))
    with _serving(tmp_path / "server.log", run) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 2400})
        page.goto(url)
        _wait_idle(page)
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Decision-feature map").click()
        page.wait_for_selector("text=not stored for this run yet", timeout=120_000)
        for key, choice in (("job_attacks", "fgsm"), ("job_detectors", "msp")):
            box = page.locator(f".st-key-{key}")
            box.locator('[aria-label="Clear all"], [title="Clear all"]').first.click()
            box.locator("input").fill(choice)
            box.locator("input").press("Enter")
            page.keyboard.press("Escape")
        page.locator(".st-key-job_limit input").fill("60")
        page.locator(".st-key-job_limit input").press("Tab")
        page.locator(".st-key-job_adaptive label").click()  # off
        page.get_by_role("button", name="Start the analysis").click()
        page.wait_for_selector("text=Analysis running: step", timeout=60_000)
        page.wait_for_selector('[data-testid="stPlotlyChart"] .main-svg', timeout=400_000)
        page.wait_for_selector("text=Draw a lasso or a box", timeout=60_000)
        from analysis import jobs
        from models import load_run

        job = jobs.latest(load_run(run))
        assert job.state == "done" and job.config["attacks"] == ["fgsm"] and job.config["detectors"] == ["msp"]
        assert job.config["limit"] == 60 and job.config["adaptive"] is False
        page.screenshot(path=str(_shots(tmp_path) / "map-after-job.png"), full_page=True)
