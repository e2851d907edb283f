"""Prune-time benchmark on a ~100M-parameter Llama-shaped random model (CPU).

Prints each method's prune time divided by the time of two dense forward passes of the same calibration set
(the floor of sequential calibration) and the process's peak memory; then SparseGPT's default path (one Hessian
per input, Linears sharing it swept together over their stacked rows) against the reference path (one Hessian
and one sweep per Linear) on the same model: timed interleaved (A, B, A, B, ...) because the machine is
shared, min of each, in wall-clock and in process CPU time (which other jobs disturb least), with the
ratios, the fraction of identical mask entries and the largest relative weight difference. All in one run.

    python bench/bench_prune.py [--nsamples 16] [--seqlen 128] [--threads 1] [--layers 12] [--repeats 2]
                                [--sparsegpt-only]
    # on a GPU machine: the 7B shape (hidden 4096, FFN 11008, 32 layers) in bf16, built directly on the GPU
    python bench/bench_prune.py --shape 7b --device cuda --dtype bfloat16 --nsamples 128 --seqlen 2048 --repeats 1
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

SHAPES = {  # hidden, FFN, layers, heads, vocab
    "100m": (768, 2048, 12, 12, 8000),
    "7b": (4096, 11008, 32, 32, 32000),
}


def build_model(seed: int = 0, layers: int | None = None, shape: str = "100m", device: str = "cpu",
                dtype: torch.dtype = torch.float32):
    """A random Llama of `shape`, created directly on `device` in `dtype` (a 7B fp32 copy on the host would
    need 28 GB and minutes of initialisation)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    hidden, ffn, n_layers, heads, vocab = SHAPES[shape]
    torch.manual_seed(seed)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers or n_layers,
                      num_attention_heads=heads, num_key_value_heads=heads, vocab_size=vocab,
                      max_position_embeddings=4096)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(default)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dense_forward_time(model, calib) -> float:
    """Two dense forward passes over the calibration set, one row at a time (as the engine runs it)."""
    device = str(next(model.parameters()).device)
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for _ in range(2):
            for i in range(calib.shape[0]):
                model(input_ids=calib[i:i + 1].to(device), use_cache=False)
    sync(device)
    return time.perf_counter() - t0


def peak_rss_mb() -> float:
    """Peak host RSS, or peak GPU memory allocated when running on CUDA."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nsamples", type=int, default=16)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="100m")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default: the shape's; widths kept)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each SparseGPT path")
    ap.add_argument("--sparsegpt-only", action="store_true", help="skip the other methods")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from pruners import PruneConfig, prune

    dtype = getattr(torch, args.dtype)
    model = build_model(layers=args.layers, shape=args.shape, device=args.device, dtype=dtype)
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    calib = torch.randint(0, cfg.vocab_size, (args.nsamples, args.seqlen),
                          generator=torch.Generator().manual_seed(0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    dense = dense_forward_time(model, calib)
    memory = "peak GPU MB" if args.device.startswith("cuda") else "peak RSS MB"
    print(f"model: Llama-shaped, {n_params / 1e6:.1f}M params, hidden {cfg.hidden_size}, FFN "
          f"{cfg.intermediate_size}, {cfg.num_hidden_layers} layers, {args.dtype} on {args.device}; "
          f"calibration {args.nsamples}x{args.seqlen}; torch threads {args.threads}")
    print(f"two dense forward passes: {dense:.2f} s   ({memory} so far {peak_rss_mb():.0f})")
    print(f"{'method':<28}{'prune s':>10}{'/ 2 dense':>11}{memory:>13}{'CPU s':>10}")

    def run(method, opts, label):
        model.load_state_dict(state)
        sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        result = prune(model, calib, PruneConfig(method=method, options=opts), device=args.device)
        sync(args.device)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"{label:<28}{dt:>10.2f}{dt / dense:>11.2f}{peak_rss_mb():>13.0f}{cpu:>10.2f}", flush=True)
        return result, (dt, cpu)

    if not args.sparsegpt_only:
        for method in ("magnitude", "wanda", "ria", "gblm"):
            run(method, {}, method)
    fast_t, ref_t = [], []
    for _ in range(args.repeats):  # interleaved: load from other jobs hits both paths alike
        fast, t = run("sparsegpt", {"shared_hessian": True}, "sparsegpt (shared, stacked)")
        fast_t.append(t)
        ref, t = run("sparsegpt", {"shared_hessian": False}, "sparsegpt (per-Linear)")
        ref_t.append(t)
    same = sum(int((fast.masks[k] == ref.masks[k]).sum()) for k in ref.masks) / \
        sum(v.numel() for v in ref.masks.values())
    rel = max(float((fast.weights[k] - ref.weights[k]).norm() / ref.weights[k].norm()) for k in ref.weights)
    tf, tr = min(t[0] for t in fast_t), min(t[0] for t in ref_t)
    cf, cr = min(t[1] for t in fast_t), min(t[1] for t in ref_t)
    print(f"sparsegpt min of {args.repeats}: shared+stacked {tf:.2f} s, per-Linear {tr:.2f} s -> speedup "
          f"{tr / tf:.2f}x wall; CPU time {cf:.2f} s vs {cr:.2f} s -> {cr / cf:.2f}x (CPU time is what other jobs "
          f"on a shared machine disturb least)")
    print(f"identical mask entries {same:.6f}; largest relative weight difference {rel:.1e}")
    buf = args.nsamples * args.seqlen * cfg.hidden_size * dtype.itemsize / 2**20
    print(f"one calibration activation buffer: {buf:.1f} MB (the engine keeps two: inputs and outputs)")


if __name__ == "__main__":
    main()
