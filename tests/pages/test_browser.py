"""The dashboard in a real browser (Debian's chromium driven by Playwright), walking a new user's flow: start the
server on a free port with a private cache, launch the demo job from the Run page and a second one, open every
page, open a neuron from the table, follow a copied URL, compare the two runs, run a small study and watch its
results appear without a reload; then, on a server with no NSA_* data or model variables, name a local model
folder. Screenshots go to tests/artifacts/ (git-ignored) and are meant to be looked at."""
from __future__ import annotations

import json
import os
import re
import shutil
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


STUDY = """name: browser-study
description: two magnitude runs of the demo model, for the browser test
base:
  model: demo
  prune: {method: magnitude, sparsity: 0.5, pattern: unstructured}
  evaluate: {tasks: [demo-reviews], limit: 24}
axes:
  sparsity: [0.3, 0.6]
"""


def start_server(tmp_path, env: dict, name: str):
    port = free_port()
    log = open(tmp_path / f"{name}.log", "wb")
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
                pytest.fail("streamlit did not start: " + (tmp_path / f"{name}.log").read_text(errors="replace"))
            time.sleep(0.3)
    return proc, url


def stop_server(proc, cache: Path) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    _stop_worker(cache)


@pytest.fixture
def server(tmp_path, stories_dir):
    cache = tmp_path / "cache"
    (cache / "studies").mkdir(parents=True)
    (cache / "studies" / "browser-study.yaml").write_text(STUDY)
    env = dict(os.environ, NSA_CACHE_DIR=str(cache), NSA_JOB_THREADS="1", NSA_ALLOWED_DIRS=str(stories_dir.parent))
    proc, url = start_server(tmp_path, env, "server")
    yield url, env
    stop_server(proc, cache)


@pytest.fixture
def bare_server(tmp_path, stories_dir):
    """A server with none of the NSA_* data, model or allowed-folder variables (only a private cache)."""
    cache = tmp_path / "bare-cache"
    inside = cache / "my-models" / "stories260K"
    shutil.copytree(stories_dir, inside)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NSA_")} | {"NSA_CACHE_DIR": str(cache)}
    proc, url = start_server(tmp_path, env, "bare-server")
    yield url, inside, stories_dir
    stop_server(proc, cache)


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


def launch_and_wait(page, limit_s: float = 400) -> None:
    """Press Launch and wait for the newest queue entry to offer its results."""
    before = page.get_by_text(re.compile(r"^Open results")).count()
    page.get_by_role("button", name="Launch").click()
    done = page.get_by_text(re.compile(r"^Open results"))
    failed = page.get_by_text(re.compile(r"^[0-9a-f]{8} failed \("))
    deadline = time.time() + limit_s
    while done.count() <= before:
        assert not failed.count(), failed.first.inner_text()
        assert time.time() < deadline, "the job did not finish in time"
        page.wait_for_timeout(1000)


def open_page(page, url: str, title: str, charts: int = 0) -> None:
    page.goto(url)
    page.get_by_role("heading", name=title).wait_for(timeout=30_000)
    if charts:
        assert wait_charts(page, charts) >= charts
    settle(page)
    assert_no_traceback(page)


def test_browser_end_to_end(server, stories_dir):
    from playwright.sync_api import sync_playwright

    url, env = server
    cache = Path(env["NSA_CACHE_DIR"])
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
        set_number(page, "Examples per task (0 = all)", 24)  # NSA's task is evaluated: NSA reads the same 24
        shot(page, "01-run-form")
        launch_and_wait(page)
        # a second run: another calibration seed, everything else equal
        set_number(page, "seed", 1)
        launch_and_wait(page)
        shot(page, "02-run-queue-done")
        assert_no_traceback(page)
        runs = sorted(p.name for p in (cache / "runs").iterdir() if (p / "manifest.json").is_file())
        assert len(runs) == 2, runs

        page.get_by_text(re.compile(r"^Open results")).first.click()
        page.get_by_role("heading", name="Pruned neurons").wait_for()
        assert wait_charts(page, 1) >= 1
        settle(page)
        shot(page, "03-neurons")
        assert_no_traceback(page)

        # labelled neurons only, then select the first row of the neuron table: its neuron page opens
        page.get_by_text("Labelled only", exact=True).click()
        settle(page)
        grid = page.locator("[data-testid='stDataFrame']").first
        grid.scroll_into_view_if_needed()
        grid.click(position={"x": 14, "y": 35 + 17})
        page.get_by_role("heading", name=re.compile(r"^Neuron \d+ of layer \d+")).wait_for(timeout=20_000)
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
        top = json.loads((cache / "runs" / run_id / "nsa" / "top_examples.jsonl").read_text().splitlines()[0])
        other.goto(f"{url}/neurons?run={run_id}&layer={top['layer']}&neuron={top['index']}")
        other.get_by_role("heading", name="Top-activating examples").wait_for(timeout=30_000)
        settle(other)
        assert other.get_by_text("pruned", exact=True).count() >= 1
        assert_no_traceback(other)
        shot(other, "05b-neuron-dense-vs-pruned")

        open_page(other, f"{url}/semantics?run={run_id}", "Semantics (NSA)", 1)
        shot(other, "06-semantics")
        open_page(other, f"{url}/accuracy?run={run_id}", "Task accuracy", 1)
        # the table and the flips list rest on the same 24 examples, and say so
        other.get_by_text(re.compile(r"of the 24 examples")).first.wait_for(timeout=10_000)
        shot(other, "06-accuracy")

        # Compare: both runs of the demo model, each against its own dense baseline, one model group
        open_page(other, f"{url}/compare?runs={','.join(runs)}", "Compare runs", 1)
        assert not other.get_by_text("nan").count()
        shot(other, "07-compare")

        # Study: two runs; the results appear while the page stays open (no reload)
        open_page(other, f"{url}/study?study=browser-study", "Study")
        other.get_by_role("button", name="Run").click()
        finished = other.get_by_text(re.compile(r"2 of 2 runs finished|2 finished"))
        deadline = time.time() + 300
        while not finished.count():
            assert time.time() < deadline, "the study did not finish in time"
            other.wait_for_timeout(1000)
        other.get_by_role("heading", name="Accuracy vs sparsity").wait_for(timeout=30_000)
        wait_charts(other, 1)
        settle(other)
        assert_no_traceback(other)
        shot(other, "08-study-live")
        browser.close()


def test_a_local_model_folder_with_no_environment_variables(bare_server):
    """Issue 12, defect 1, in the browser: no NSA_* variable set; a folder inside the cache is accepted, one
    outside every allowed folder is refused with a sentence; never a traceback."""
    from playwright.sync_api import sync_playwright

    url, inside, outside = bare_server
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(url + "/")
        page.get_by_role("heading", name="Run a pruning job").wait_for(timeout=30_000)
        page.get_by_text("local folder", exact=True).click()
        settle(page)
        box = page.get_by_label("Model folder or .gguf file", exact=True)
        box.fill(str(outside))
        box.press("Enter")
        settle(page)
        page.get_by_text(re.compile("outside the folders this app may read")).first.wait_for(timeout=10_000)
        assert_no_traceback(page)
        shot(page, "09-local-folder-refused")
        box.fill(str(inside))
        box.press("Enter")
        # the refusal goes once the rerun with the new path has drawn (waited for: a loaded machine is slow)
        page.get_by_text(re.compile("outside the folders this app may read")).first.wait_for(state="detached",
                                                                                             timeout=60_000)
        settle(page)
        assert_no_traceback(page)
        page.get_by_role("button", name="Launch").wait_for(timeout=10_000)
        shot(page, "10-local-folder-accepted")
        browser.close()
