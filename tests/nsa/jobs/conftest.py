"""Fixtures of the job tests: a private cache per test, real worker processes, specs on stories260K."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache (store, runs) for this test; child processes inherit it through the environment."""
    path = tmp_path / "cache"
    monkeypatch.setenv("NSA_CACHE_DIR", str(path))
    monkeypatch.setenv("NSA_JOB_THREADS", "1")
    return path


@pytest.fixture
def spec(stories_dir) -> dict:
    """A small but complete job on the real stories260K checkpoint (prune, evaluate, NSA)."""
    return {"model": str(stories_dir),
            "prune": {"method": "wanda", "sparsity": 0.5, "pattern": "unstructured"},
            "calibration": {"source": "sst2", "nsamples": 8, "seqlen": 64, "seed": 0},
            "evaluate": {"tasks": ["sst2"], "limit": 16},
            "nsa": {"task": "sst2", "limit": 16}}


class Workers:
    """Starts `python -m nsa worker` processes and stops the ones still running at the end of a test."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, []

    def start(self, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"worker-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "nsa", "worker", *args], cwd=ROOT, env=os.environ.copy(),
                                stdout=log, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("worker-*.log")))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def workers(tmp_path):
    w = Workers(tmp_path)
    yield w
    w.stop()


def wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    """Poll `predicate` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    end = time.time() + timeout
    while time.time() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture
def wait():
    return wait_for


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, stories_dir) -> Path:
    """A random 3.6M-parameter Llama (hidden 256, 4 layers, ffn 688) with stories260K's tokenizer, saved
    with save_pretrained: big enough that pruning it on a few hundred calibration windows takes seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama-3m")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(stories_dir).save_pretrained(folder)
    return folder


@pytest.fixture
def long_spec(llama_dir) -> dict:
    """A job that spends several seconds pruning (128 windows of 128 tokens through SparseGPT's Hessians): long
    enough for a second `python -m nsa` process (2-3 s of imports) to cancel or kill it mid-way."""
    return {"model": str(llama_dir),
            "prune": {"method": "sparsegpt", "sparsity": 0.5},
            "calibration": {"source": "sst2", "nsamples": 128, "seqlen": 128, "seed": 0},
            "evaluate": {"tasks": ["sst2"], "limit": 16}}


@pytest.fixture
def quick_spec(llama_dir) -> dict:
    """A job of about a second of work: magnitude pruning (no calibration data, no evaluation)."""
    return {"model": str(llama_dir), "prune": {"method": "magnitude", "sparsity": 0.5}}


