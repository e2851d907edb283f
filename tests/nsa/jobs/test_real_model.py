"""A real language model through every stage of a job: SmolLM2-135M-Instruct from its 4-bit GGUF file (converted
once per session), magnitude pruning at 50%, SST-2 with the review prompt, one NSA pass on the same examples.

The floor: on SST-2's first 48 validation sentences the dense model scores 0.8125 with the review prompt
(0.80 on 100, 0.78 on 400: docs/study.md); 0.7 leaves room for platform rounding while still being far above
the majority-class rate (0.52), which the binomial test checks as well. Validation draws are off here for time
(the study runs them)."""
from __future__ import annotations

import json

import pandas as pd

from nsa.jobs import runs
from nsa.jobs.pipeline import run_job
from tests.conftest import SMOLLM2_GGUF

FLOOR = 0.7
LIMIT = 48


def test_smollm2_prune_evaluate_and_attribute(smollm2_dir):
    spec = {"model": str(SMOLLM2_GGUF), "prune": {"method": "magnitude", "sparsity": 0.5},
            "evaluate": {"tasks": ["sst2"], "limit": LIMIT}, "prompt": {"template": "review"},
            "nsa": {"task": "sst2", "options": {"validation": False}}}
    folder = run_job(spec)
    assert runs.verify_run(folder.name) == []
    log = (folder / "logs" / "job.log").read_text()
    assert "convert" not in log.lower() or "already converted" in log.lower()  # the session's conversion reused

    stats = json.loads((folder / "stats.json").read_text())
    assert abs(stats["overall_sparsity"] - 0.5) < 0.01
    neurons = pd.read_parquet(folder / "neurons.parquet")
    assert len(neurons) == 30 * 1536  # one row per MLP neuron of the 30 layers

    sst2 = json.loads((folder / "eval" / "comparison.json").read_text())["tasks"]["sst2"]
    assert sst2["n"] == LIMIT and sst2["dense_acc"] >= FLOOR, sst2["dense_acc"]
    nsa = json.loads((folder / "nsa" / "summary.json").read_text())
    assert nsa["n_examples"] == LIMIT  # NSA read the evaluation's 48 records, not a set of its own
    assert nsa["dense_vs_chance"]["above_chance"] and nsa["dense_vs_chance"]["p_value"] < 1e-3
    assert nsa["neurons"]["labelled"] > 0
    assert nsa["words"]["n_words"] > 0 and set(nsa["words"]["clusters"]) == {"negative", "positive"}
