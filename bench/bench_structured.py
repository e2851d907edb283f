"""Structured pruning: how much smaller and faster the saved model really is (CPU).

For each model (the demo model, SmolLM2-135M converted from its GGUF) and each structured method (flap, shortgpt)
at each sparsity: prune a copy of the dense model, shrink it into a stock model (`pruners.shrink`),
`save_pretrained` it, load it back with plain `AutoModelForCausalLM.from_pretrained`, and measure against the
dense model saved and loaded the same way, all in one run:

* parameters and on-disk size (the safetensors files);
* the realised sparsity (fraction of decoder Linear weights removed, from the masks) and layers removed;
* prefill tokens/s: forward of a fixed batch of real text (batch × seqlen tokens), no cache;
* decode tokens/s: greedy generation, batch 1, a prompt from the same text, `--new-tokens` new tokens, KV cache;
* the mean next-token loss on that batch (a sanity figure, not an evaluation).

Timings are process CPU time (1 torch thread: the compute itself, which other jobs on the shared cores disturb
least; on an idle machine it equals wall time), the minimum over `--repeats`. The dense model is timed again
between variants (interleaved) and every ratio is taken against the best dense timing of the run; the table is
printed at the end of each model.

    NSA_DATA_DIR=../shared/data python bench/bench_structured.py [--models demo smollm2] [--threads 1]
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from nsa.calibration import build_calibration  # noqa: E402
from nsa.models import load_model  # noqa: E402
from pruners import PruneConfig, prune  # noqa: E402
from pruners.shrink import shrink  # noqa: E402

SMOLLM2 = "/work/shared/models/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
MODELS = {  # name: (model id, calibration source, text source of the timed batch)
    "demo": ("demo", "demo-generic", "demo-reviews"),
    "smollm2": (SMOLLM2, "wikitext2", "c4"),
}


def disk_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


@torch.no_grad()
def prefill(model, batch: torch.Tensor, repeats: int) -> tuple[float, float]:
    """(tokens/s of a forward of the whole batch, mean next-token loss); one untimed warm-up forward first."""
    model(input_ids=batch, use_cache=False)
    best, loss = float("inf"), None
    for _ in range(repeats):
        t0 = time.process_time()
        out = model(input_ids=batch, labels=batch, use_cache=False)
        best = min(best, time.process_time() - t0)
        loss = float(out.loss)
    return batch.numel() / best, loss


@torch.no_grad()
def decode(model, prompt: torch.Tensor, new_tokens: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                             pad_token_id=0)
        best = min(best, time.process_time() - t0)
        assert out.shape[1] == prompt.shape[1] + new_tokens
    return new_tokens / best


def measure(folder: Path, batch, prompt, args) -> dict:
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tps, loss = prefill(model, batch, args.repeats)
    return {"params": sum(p.numel() for p in model.parameters()), "disk": disk_bytes(folder), "prefill": tps,
            "decode": decode(model, prompt, args.new_tokens, args.repeats), "loss": loss}


def run_model(name: str, args, root: Path) -> list[dict]:
    model_id, calib_source, text_source = MODELS[name]
    dense, tok = load_model(model_id)
    calib = build_calibration(calib_source, tok, args.nsamples, args.seqlen, seed=0).input_ids
    batch = build_calibration(text_source, tok, args.batch, args.seqlen, seed=1).input_ids
    prompt = batch[:1, :16]
    dense_dir = root / f"{name}-dense"
    dense.save_pretrained(dense_dir)
    cfg = dense.config
    print(f"\n## {name}: {type(dense).__name__}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads} heads / "
          f"{getattr(cfg, 'num_key_value_heads', cfg.num_attention_heads)} kv, intermediate {cfg.intermediate_size}; "
          f"calibration {calib_source} {tuple(calib.shape)}, timed batch {text_source} {tuple(batch.shape)}", flush=True)
    base = measure(dense_dir, batch, prompt, args)
    rows = [{"variant": "dense", **base, "realised": 0.0, "shape": dense_shape(cfg)}]
    dense_runs = [base]
    for method in args.methods:
        for s in args.sparsities:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            result = prune(model, calib, PruneConfig(method, s))
            prune_s = time.perf_counter() - t0
            small, summary = shrink(model, result.masks)
            out = root / f"{name}-{method}-{s}"
            small.save_pretrained(out)
            del model, small
            dense_runs.append(measure(dense_dir, batch, prompt, args))  # interleaved dense timing
            got = measure(out, batch, prompt, args)
            rows.append({"variant": f"{method} {s:g}", **got, "realised": result.stats["overall_sparsity"],
                         "shape": dense_shape(AutoModelForCausalLM.from_pretrained(out).config),
                         "prune_s": prune_s})
            print(f"  {method} {s:g}: pruned in {prune_s:.1f}s, removed layers {summary['removed_layers']}, "
                  f"{'; '.join(summary['kept_full_shape']) or 'every removed unit dropped'}", flush=True)
    best = {k: max(d[k] for d in dense_runs) for k in ("prefill", "decode")}
    rows[0].update(best)
    print(f"dense timed {len(dense_runs)}×: prefill {min(d['prefill'] for d in dense_runs):.0f}–{best['prefill']:.0f} "
          f"tok/s, decode {min(d['decode'] for d in dense_runs):.1f}–{best['decode']:.1f} tok/s (ratios vs the best)")
    print(HEADER)
    for r in rows:
        print(_row(r, best))
    return rows


def dense_shape(c) -> str:
    return f"{c.num_hidden_layers}L {c.num_attention_heads}h/{c.num_key_value_heads}kv I={c.intermediate_size}"


HEADER = ("| variant | realised sparsity | shape | params | on disk | prefill tok/s (vs dense) | "
          "decode tok/s (vs dense) | loss |\n|---|---|---|---|---|---|---|---|")


def _row(r: dict, d: dict) -> str:
    return (f"| {r['variant']} | {r['realised']:.3f} | {r['shape']} | {r['params'] / 1e6:.2f}M | "
            f"{r['disk'] / 2**20:.1f} MiB | {r['prefill']:.0f} ({r['prefill'] / d['prefill']:.2f}×) | "
            f"{r['decode']:.1f} ({r['decode'] / d['decode']:.2f}×) | {r['loss']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--methods", nargs="+", default=["flap", "shortgpt"])
    ap.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.3, 0.5])
    ap.add_argument("--nsamples", type=int, default=64)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); prefill = batch {args.batch} × {args.seqlen} tokens, "
          f"decode = batch 1, {args.new_tokens} new tokens; min of {args.repeats} (process CPU time)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            run_model(name, args, Path(tmp))


if __name__ == "__main__":
    main()
