"""Fixture runs for the app tests, made by the real job pipeline (`nsa.jobs.pipeline.run_job`) on the real
stories260K checkpoint and SST-2 rows: prune → evaluate dense/pruned → NSA. Two runs (Wanda and magnitude)
so the Compare page has something to compare. Built once per session in a private cache."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def small_spec(stories_dir, method: str) -> dict:
    spec = {"model": str(stories_dir),
            "prune": {"method": method, "sparsity": 0.5, "pattern": "unstructured"},
            "evaluate": {"tasks": ["sst2"], "limit": 24},
            "nsa": {"task": "sst2", "limit": 24}}
    if method != "magnitude":
        spec["calibration"] = {"source": "wikitext2", "nsamples": 4, "seqlen": 64, "seed": 0}
    return spec


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory, stories_dir) -> Path:
    """A private NSA_CACHE_DIR holding two complete runs; returns the cache folder."""
    import torch

    from nsa.jobs.pipeline import run_job

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
def run_ids(cache_env) -> list[str]:
    from nsa.results import list_runs

    return sorted(list_runs()["run_id"].tolist())
