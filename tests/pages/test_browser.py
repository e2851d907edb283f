"""The dashboard in a real browser (Debian's chromium driven by Playwright): start the server on a free port with a
private cache, launch a job from the Run page, wait for it, open every page, check the charts rendered, open a
neuron from the table, follow a copied URL. Screenshots go to tests/artifacts/ (git-ignored)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
SHOTS = ROOT / "tests" / "artifacts"
DEMO_MODEL = ROOT / "nsa" / "demo" / "model"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not CHROMIUM.exists(),
                                                  reason="/usr/bin/chromium is absent (apt-get install chromium)")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, stories_dir):
    port = free_port()
    env = dict(os.environ, NSA_CACHE_DIR=str(tmp_path / "cache"), NSA_JOB_THREADS="1",
               NSA_ALLOWED_DIRS=str(stories_dir.parent))
    log = open(tmp_path / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                             "--server.headless", "true"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://localhost:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("streamlit did not start: " + (tmp_path / "server.log").read_text(errors="replace"))
            time.sleep(0.3)
    yield url, env
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    _stop_worker(Path(env["NSA_CACHE_DIR"]))


def _stop_worker(cache: Path) -> None:
    """Stop the background worker the app started for this test (found through the job store's pid)."""
    import sqlite3

    db = cache / "jobs.sqlite"
    if not db.is_file():
        return
    pids = {r[0] for r in sqlite3.connect(db).execute("SELECT worker_pid FROM jobs") if r[0]}
    for pid in pids:
        try:
            os.kill(pid, 15)
        except OSError:
            pass


def wait_charts(page, n: int = 1) -> int:
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {n}",
                           timeout=30_000)
    return page.locator(".js-plotly-plot").count()


def settle(page) -> None:
    """Wait until streamlit is idle (no 'Running...' status widget)."""
    page.wait_for_timeout(300)
    page.wait_for_function("!document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=30_000)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_label(label, exact=True).and_(page.locator("input"))
    box.fill(str(value))
    box.press("Enter")
    settle(page)


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def assert_no_traceback(page) -> None:
    main = page.locator("[data-testid='stMain']").inner_text()
    assert "Traceback (most recent call last)" not in main, main[:2000]


def test_browser_end_to_end(server, stories_dir):
    from playwright.sync_api import sync_playwright

    url, env = server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 2000})
        # the server's very first session opens a page URL (a copied link): the dashboard's own navigation and
        # layout must show, not Streamlit's bare pages/ folder (which would list "app" and file names)
        page.goto(url + "/accuracy")
        nav = page.locator("[data-testid='stSidebarNav']")
        nav.get_by_text("Task accuracy", exact=True).wait_for(timeout=30_000)
        assert not nav.get_by_text("app", exact=True).count()
        page.goto(url + "/")
        page.get_by_role("heading", name="Run a pruning job").wait_for(timeout=30_000)
        assert (DEMO_MODEL / "config.json").is_file(), "the committed demo model is missing"
        page.get_by_text(re.compile(r"^SYNTHETIC: ")).wait_for(timeout=10_000)  # demo selected and labelled
        set_number(page, "nsamples", 8)
        set_number(page, "seqlen", 64)
        set_number(page, "Examples per task (0 = all)", 24)
        set_number(page, "NSA examples (0 = all)", 24)
        shot(page, "01-run-form")
        page.get_by_role("button", name="Launch").click()
        done = page.get_by_text(re.compile(r"^Open results of "))
        failed = page.get_by_text(re.compile(r"failed:"))
        deadline = time.time() + 110
        while not done.count():
            assert not failed.count(), failed.first.inner_text()
            assert time.time() < deadline, "the job did not finish in time"
            page.wait_for_timeout(1000)
        shot(page, "02-run-queue-done")
        assert_no_traceback(page)

        done.first.click()
        page.get_by_role("heading", name="Pruned neurons").wait_for()
        assert wait_charts(page, 2) >= 2
        settle(page)
        shot(page, "03-neurons")
        assert_no_traceback(page)

        # labelled neurons only, then select the first row of the neuron table: its neuron page opens
        page.get_by_text("Labelled only", exact=True).click()
        settle(page)
        grid = page.locator("[data-testid='stDataFrame']").first
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        grid.click(position={"x": 14, "y": 35 + 17})
        page.get_by_role("heading", name=re.compile(r"^Neuron \d+ of layer \d+")).wait_for(timeout=20_000)
        assert box is not None
        wait_charts(page, 1)
        settle(page)
        heading = page.get_by_role("heading", name=re.compile(r"^Neuron \d+ of layer \d+")).inner_text()
        page.get_by_role("heading", name="NSA words and scores").wait_for(timeout=20_000)  # a labelled neuron
        shot(page, "04-neuron")

        # a copied URL reproduces the view in a fresh tab
        copied = page.url
        assert "neuron=" in copied and "run=" in copied
        other = browser.new_page(viewport={"width": 1400, "height": 2000})
        other.goto(copied)
        other.get_by_role("heading", name=heading).wait_for(timeout=30_000)
        wait_charts(other, 1)
        settle(other)
        shot(other, "05-neuron-from-url")
        run_id = re.search(r"run=([0-9a-f]+)", copied).group(1)

        # a neuron with recorded top examples: tokens coloured in the dense and in the pruned model side by side
        top = json.loads((Path(env["NSA_CACHE_DIR"]) / "runs" / run_id / "nsa" / "top_examples.jsonl")
                         .read_text().splitlines()[0])
        other.goto(f"{url}/neurons?run={run_id}&layer={top['layer']}&neuron={top['index']}")
        other.get_by_role("heading", name="Top-activating examples").wait_for(timeout=30_000)
        settle(other)
        assert other.get_by_text("pruned", exact=True).count() >= 1
        assert not other.get_by_text("record dense activations only").count()
        assert_no_traceback(other)
        shot(other, "05b-neuron-dense-vs-pruned")

        for path, title, n in (("semantics", "Semantics (NSA)", 1), ("accuracy", "Task accuracy", 1),
                               ("compare", "Compare runs", 0)):
            other.goto(f"{url}/{path}?run={run_id}")
            other.get_by_role("heading", name=title).wait_for(timeout=30_000)
            if n:
                assert wait_charts(other, n) >= n
            settle(other)
            assert_no_traceback(other)
            shot(other, f"06-{path}")
        if (ROOT / "pages" / "study.py").is_file():
            other.goto(f"{url}/study")
            settle(other)
            shot(other, "07-study")
        browser.close()
