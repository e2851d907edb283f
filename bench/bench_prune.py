"""Prune-time benchmark on a ~100M-parameter Llama-shaped random model (CPU).

Prints each method's prune time divided by the time of two dense forward passes of the same calibration set
(the floor of sequential calibration), SparseGPT with one Hessian per input vs one per Linear (same masks),
and the process's peak memory. All ratios are measured in one run.

    python bench/bench_prune.py [--nsamples 16] [--seqlen 128] [--threads 1]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402


def build_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=12, vocab_size=8000, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).eval()


def dense_forward_time(model, calib) -> float:
    """Two dense forward passes over the calibration set, one row at a time (as the engine runs it)."""
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(2):
            for i in range(calib.shape[0]):
                model(input_ids=calib[i:i + 1], use_cache=False)
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pruners import PruneConfig, prune

    model = build_model()
    n_params = sum(p.numel() for p in model.parameters())
    calib = torch.randint(0, 8000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = dense_forward_time(model, calib)
    print(f"model: Llama-shaped, {n_params / 1e6:.1f}M params, hidden 768, 12 layers; calibration "
          f"{args.nsamples}x{args.seqlen}; torch threads {args.threads}")
    print(f"two dense forward passes: {dense:.2f} s   (peak RSS so far {peak_rss_mb():.0f} MB)")
    print(f"{'method':<28}{'prune s':>10}{'/ 2 dense':>11}{'peak RSS MB':>13}")
    runs = [("magnitude", {}), ("wanda", {}), ("ria", {}), ("gblm", {}),
            ("sparsegpt", {"shared_hessian": True}), ("sparsegpt", {"shared_hessian": False})]
    masks = {}
    for method, opts in runs:
        model.load_state_dict(state)
        t0 = time.perf_counter()
        result = prune(model, calib, PruneConfig(method=method, options=opts))
        dt = time.perf_counter() - t0
        label = method + ("" if not opts else f" ({'shared' if opts['shared_hessian'] else 'per-Linear'} H)")
        masks[label] = (result.masks, dt)
        print(f"{label:<28}{dt:>10.2f}{dt / dense:>11.2f}{peak_rss_mb():>13.0f}")
    (ms, ts), (mp, tp) = masks["sparsegpt (shared H)"], masks["sparsegpt (per-Linear H)"]
    same = sum(int((ms[k] == mp[k]).sum()) for k in ms) / sum(v.numel() for v in ms.values())
    print(f"sparsegpt shared-Hessian speedup vs per-Linear: {tp / ts:.2f}x; identical mask entries {same:.6f}")
    buf = args.nsamples * args.seqlen * 768 * 4 / 2**20
    print(f"one calibration activation buffer: {buf:.1f} MB (the engine keeps two: inputs and outputs)")


if __name__ == "__main__":
    main()
