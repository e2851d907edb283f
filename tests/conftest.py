"""Shared test setup: real data from ../shared, offline hub, one torch thread, a private cache dir; and the
session's fixture runs (made by the real job pipeline) for the app, page and study tests."""
from __future__ import annotations

import os
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("NSA_SHARED_DIR", ROOT.parent / "shared")).resolve()
# absolute, so a test that changes the working directory still finds them (CI passes ../shared/data, relative)
os.environ["NSA_DATA_DIR"] = str(Path(os.environ.get("NSA_DATA_DIR") or SHARED / "data").resolve())
os.environ["NSA_MODELS_DIR"] = str(Path(os.environ.get("NSA_MODELS_DIR") or SHARED / "models").resolve())
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before the HF libraries are imported (below)
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("NSA_JOB_THREADS", "1")  # two xdist workers share 2 cores: a job process takes one thread

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from nsa.gguf import convert_gguf  # noqa: E402
from nsa.jobs.pipeline import run_job  # noqa: E402
from nsa.jobs.spec import parse_spec  # noqa: E402
from nsa.study import load_study, runner  # noqa: E402
from nsa_app.results import runs_table  # noqa: E402


def child_cpu() -> float:
    """CPU seconds used by finished child processes: "answers fast" checks on subprocesses measure this, not the
    wall clock, which a loaded machine stretches without the command doing more work."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_time() -> float:
    """CPU seconds of this process (all threads): the in-process analogue of `child_cpu`."""
    return time.process_time()


def pytest_collection_modifyitems(config, items):
    """README's test command runs two pytest-xdist workers with `--dist loadgroup`: each file is one group, so its
    module fixtures are built on one worker only, and every file that asks for the real SmolLM2 shares one group,
    so the session converts the GGUF file once."""
    files: dict[Path, list] = {}
    for item in items:
        files.setdefault(item.path, []).append(item)
    for path, file_items in files.items():
        uses_smollm2 = any("smollm2_dir" in item.fixturenames for item in file_items)
        group = "smollm2" if uses_smollm2 else str(path.relative_to(ROOT))
        for item in file_items:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"../shared not found at {SHARED}"
    return SHARED


@pytest.fixture(scope="session")
def stories_dir(shared_dir: Path) -> Path:
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="session")
def stories(stories_dir: Path):
    """(model, tokenizer) of the real stories260K checkpoint, fp32, eval mode; shared read-only: tests that
    prune or change weights work on a copy (`copy.deepcopy`) or load their own."""
    model = AutoModelForCausalLM.from_pretrained(stories_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(stories_dir)


SMOLLM2_GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct (4-bit GGUF in ../shared), converted once per session into the session's
    private cache, where the job pipeline's `load_model` finds it again (about a minute the first time)."""
    assert SMOLLM2_GGUF.is_file(), f"{SMOLLM2_GGUF} not found (set NSA_SHARED_DIR)"
    torch.set_num_threads(1)
    return convert_gguf(SMOLLM2_GGUF, tmp_path_factory.getbasetemp() / "nsa-cache")


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    return shared_dir / "reference" / "tiny-llama"


@pytest.fixture(autouse=True)
def _one_thread_and_private_cache(tmp_path_factory, monkeypatch):
    """Tests never touch the user's cache/ and do not fight over the 2 cores."""
    torch.set_num_threads(1)
    cache = tmp_path_factory.getbasetemp() / "nsa-cache"
    monkeypatch.setenv("NSA_CACHE_DIR", str(cache))
    yield


# --- fixture runs: stories260K through the real pipeline (two runs for the app, a two-run study) ----------
def small_spec(stories_dir, method: str) -> dict:
    spec = {"model": str(stories_dir),
            "prune": {"method": method, "sparsity": 0.5, "pattern": "unstructured"},
            "evaluate": {"tasks": ["sst2"], "limit": 24},
            "nsa": {"task": "sst2", "limit": 24, "options": {"label_at_chance": True}}}
    if method != "magnitude":
        spec["calibration"] = {"source": "wikitext2", "nsamples": 4, "seqlen": 64, "seed": 0}
    return spec


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory, stories_dir) -> Path:
    """A private NSA_CACHE_DIR holding two complete runs; returns the cache folder."""
    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("app-cache")
    old = os.environ.get("NSA_CACHE_DIR")
    os.environ["NSA_CACHE_DIR"] = str(cache)
    try:
        for method in ("wanda", "magnitude"):
            run_job(small_spec(stories_dir, method))
    finally:
        if old is None:
            os.environ.pop("NSA_CACHE_DIR", None)
        else:
            os.environ["NSA_CACHE_DIR"] = old
    return cache


@pytest.fixture
def cache_env(app_cache, monkeypatch) -> Path:
    monkeypatch.setenv("NSA_CACHE_DIR", str(app_cache))
    return app_cache


@pytest.fixture
def run_ids(cache_env, stories_dir) -> list[str]:
    """The two fixture runs' ids (sorted): by spec, so a test that adds a run to the app cache cannot shift them."""
    ids = sorted(parse_spec(small_spec(stories_dir, m)).id for m in ("wanda", "magnitude"))
    assert set(ids) <= set(runs_table()["run_id"]), "the fixture runs are missing from the app cache"
    return ids


TINY_STUDY = """\
name: tiny
base:
  model: {model}
  prune: {{method: wanda, sparsity: 0.5, pattern: unstructured}}
  calibration: {{source: sst2, nsamples: 4, seqlen: 32, seed: 0}}
  evaluate: {{tasks: [sst2, rte], limit: 12}}
axes:
  sparsity: [0.3, 0.7]
"""


@pytest.fixture(scope="session")
def study_cache(tmp_path_factory):
    """The session's private cache (the same folder tests/conftest.py gives every test)."""
    cache = tmp_path_factory.getbasetemp() / "nsa-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSA_CACHE_DIR", str(cache))  # session fixtures run before the per-test cache fixture
        yield cache


@pytest.fixture(scope="session")
def tiny_study(study_cache, stories_dir, tmp_path_factory):
    """(study file, plan) after running both runs through the real job pipeline, in this process."""
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("study") / "tiny.yaml"
    path.write_text(TINY_STUDY.format(model=stories_dir))
    study = load_study(path)
    plan = runner.plan(study)
    assert len(plan.runs) == 2 and not plan.finished
    for run in plan.runs:
        run_job(run.spec)
    return path, runner.plan(load_study(path))
