"""Neuron page timings (issue #16): the neuron view with stored data (AppTest, stories260K fixture run), and, on the
real SmolLM2-135M GGUF model (magnitude 50%, NSA on 24 SST-2 examples), the logit lens of one neuron, on-demand
top examples of one neuron (dense + pruned, task prompts + general text), label quality of every labelled neuron,
and the export's output tokens for all 46k neurons.

    python bench/bench_neurons.py            # prints one line per measurement (1 torch thread)
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared"
os.environ.setdefault("NSA_DATA_DIR", str(SHARED / "data"))
os.environ.setdefault("NSA_MODELS_DIR", str(SHARED / "models"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("NSA_CACHE_DIR", tempfile.mkdtemp(prefix="bench-neurons-"))

import torch  # noqa: E402

from nsa import label_quality as LQ  # noqa: E402
from nsa import neuron_examples as NE  # noqa: E402
from nsa.jobs.pipeline import run_job  # noqa: E402
from nsa.logit_lens import all_top_tokens, top_tokens  # noqa: E402
from nsa.models import load_model  # noqa: E402


def timed(label: str, fn):
    start = time.perf_counter()
    out = fn()
    print(f"{label}: {time.perf_counter() - start:.2f} s", flush=True)
    return out


def spec(model: str, calibrated: bool) -> dict:
    out = {"model": model, "prune": {"method": "wanda" if calibrated else "magnitude", "sparsity": 0.5},
           "evaluate": {"tasks": ["sst2"], "limit": 24},
           "nsa": {"task": "sst2", "limit": 24, "options": {"label_at_chance": True, "validation": False}}}
    if calibrated:
        out["calibration"] = {"source": "wikitext2", "nsamples": 4, "seqlen": 64, "seed": 0}
    return out


def page_open(run_id: str) -> None:
    from streamlit.testing.v1 import AppTest

    def render():
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.query_params.update(run=run_id, layer="1", neuron="9")
        at.switch_page("pages/neurons.py")
        return at.run()

    at = timed("neuron page, first render in this process (imports, model load, examples computed here)",
               lambda: _compute_then(render, run_id))
    timed("neuron page, new session, stored data", render)
    timed("neuron page, rerun", at.run)


def _compute_then(render, run_id):
    at = render()
    [b for b in at.button if b.label == "Compute top-activating examples"][0].click().run()
    return at


def main() -> None:
    torch.set_num_threads(1)
    tiny = timed("stories260K fixture run (pipeline)", lambda: run_job(spec(str(SHARED / "models" / "stories260K"),
                                                                          True))).name
    page_open(tiny)
    gguf = SHARED / "models" / "smollm2-135m-instruct"
    rid = timed("SmolLM2-135M run: magnitude 50%, eval + NSA on 24 SST-2 (incl. GGUF conversion)",
                lambda: run_job(spec(str(gguf), False))).name
    run = NE.run_inputs(rid)
    model, tok = timed("load SmolLM2 (converted folder)", lambda: load_model(run.model))
    timed("logit lens, one neuron, dense + pruned", lambda: top_tokens(model, tok, 15, 100, run.masks, run.weights))
    for layer in (0, 15, 29):
        data = timed(f"on-demand examples, layer {layer} neuron 7 (20 task prompts + 12 × 48 general tokens, dense "
                     "+ pruned)", lambda: NE.compute(model, tok, run, layer, 7))
    print(f"  tokens read per model: {data['histogram']['n_tokens']}")
    labels = len(LQ._labels(rid))
    timed(f"label quality, {labels} labelled neurons, 200 held-out prompts, dense + pruned, 1000 bootstraps",
          lambda: LQ.quality(model, tok, run))
    timed("output tokens of all 46,080 neurons (export), dense + pruned, top 5",
          lambda: all_top_tokens(model, tok, run.masks, run.weights))


if __name__ == "__main__":
    main()
