"""Benchmark of NSA step 2 (streamed neuron-word matching): time and memory per 1k examples, the cost of the
streaming hooks relative to the bare forward passes, and the memory plan of a 7B Llama (32 x 11008 neurons).

    NSA_DATA_DIR=../shared/data python bench/bench_nsa.py [--model ../shared/models/stories260K]
        [--task sst2] [--limit 872] [--words 40] [--plan-words 40,200,1000] [--hook-layer-check]

What is measured in this one run (CPU, 1 thread):
1. word selection + encoding + streaming over `--limit` prompts with the hooks, vs the same forward passes
   without hooks (the ratio is the hooks' overhead), scaled to per 1k examples;
2. the running-sum state in bytes (what stays resident: it does not grow with the number of examples);
3. the hook body on one 7B-sized layer activation [batch 8, seq 128, 11008] with K words: seconds per
   layer-batch, extrapolated to 32 layers (the extra cost a 7B run pays per batch, on this CPU);
4. the 7B memory plan: resident sums 32 x 11008 x (K + 2) float64 + top examples, plus the transient
   activation of one layer per batch, beside the bf16 weights (13.5 GB), against an 80 GB GPU.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nsa.models import load_model  # noqa: E402

os.environ.setdefault("NSA_DATA_DIR", str(ROOT.parent / "shared" / "data"))

GB = 1e9


def load(model_id: str):
    return load_model(model_id)


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB


def state_bytes(sizes: list[int], n_words: int, top_m: int) -> int:
    """Resident running sums: s1, s2 [N] + wsum [K, N] in float64, top values float32 + indices int64."""
    return sum(n * 8 * (2 + n_words) + top_m * n * (4 + 8) for n in sizes)


def measure_model(model_id: str, task: str, limit: int, n_words: int, batch_size: int) -> dict:
    import torch

    from nsa import datasets as D
    from nsa import matching as M
    from nsa.neurons import layer_sizes, neuron_sites
    from nsa.words import WordConfig, select_words

    model, tok = load(model_id)
    spec = D.get_task(task)
    rows = D.load_examples(spec, limit=limit)
    t0 = time.perf_counter()
    sel = select_words(spec, rows, "learned", WordConfig(top_k=n_words // 2))
    t_words = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoded = M.encode(spec, rows, tok, sel.words(), M.context_length(model, tok, None))
    t_encode = time.perf_counter() - t0
    sites = neuron_sites(model)
    sizes = layer_sizes(sites)
    rss0 = rss_gb()
    t0 = time.perf_counter()
    acc = M.stream(model, encoded, sites, sizes, len(sel.words()), batch_size, top_m=5)
    t_stream = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():  # the same padded batches without hooks
        for start in range(0, len(encoded), batch_size):
            ids, att = M.padded(encoded[start:start + batch_size], "cpu")
            model(input_ids=ids, attention_mask=att, use_cache=False)
    t_bare = time.perf_counter() - t0
    t0 = time.perf_counter()
    matching = M.label_neurons(acc.state(), sel.words(), [sel.cluster_of()[w] for w in sel.words()],
                               M.MatchConfig())
    t_label = time.perf_counter() - t0
    per_k = 1000 / len(rows)
    return {"model": model_id, "examples": len(rows), "tokens": sum(len(e.ids) for e in encoded),
            "neurons": sum(sizes), "words": len(sel.words()), "labelled": len(matching.labels),
            "words_s_per_1k": t_words * per_k, "encode_s_per_1k": t_encode * per_k,
            "stream_s_per_1k": t_stream * per_k, "bare_forward_s_per_1k": t_bare * per_k,
            "hook_overhead": t_stream / t_bare if t_bare else None, "label_s": t_label,
            "state_mb": state_bytes(sizes, len(sel.words()), 5) / 1e6,
            "peak_rss_gb": rss_gb(), "rss_growth_during_stream_gb": rss_gb() - rss0}


def measure_7b_hook(n_words: int, batch: int = 8, seq: int = 128, neurons: int = 11008, repeats: int = 3) -> dict:
    """The hook body on one 7B-sized layer: seconds per layer-batch on this CPU (32 layers extrapolated)."""
    import torch

    from nsa import matching as M

    acc = M.Accumulator([neurons], n_words, 5, "cpu")
    g = torch.Generator().manual_seed(0)
    encoded = []
    for b in range(batch):
        text = list(range(20, seq))
        occ = [(int(torch.randint(n_words, (1,), generator=g)), t) for t in text[::6]]
        encoded.append(M.Encoded(index=b, ids=[0] * seq, offsets=[(0, 1)] * seq, prompt="", text_positions=text,
                                 occurrences=occ))
    acts = torch.randn(batch, seq, neurons, generator=g).to(torch.bfloat16)
    acc.start_batch(encoded, seq, "cpu")
    acc(0, acts)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        acc(0, acts)
    per_layer = (time.perf_counter() - t0) / repeats
    return {"batch": batch, "seq": seq, "words": n_words, "s_per_layer_batch": per_layer,
            "s_per_7b_batch_32_layers": 32 * per_layer}


def plan_7b(n_words: int, batch: int = 16, seq: int = 512, layers: int = 32, neurons: int = 11008,
            top_m: int = 5, gpu_gb: float = 80.0) -> dict:
    weights = 6.74e9 * 2  # Llama-2-7B parameters in bf16
    resident = state_bytes([neurons] * layers, n_words, top_m)
    transient = batch * seq * neurons * (2 + 8 + 4)  # one layer: bf16 acts, float64 gather, float32 masked max
    forward = batch * seq * 4096 * 2 * 8 + batch * seq * 32000 * 4  # hidden states + fp32 logits (rough)
    total = weights + resident + transient + forward
    return {"words": n_words, "neurons": layers * neurons, "resident_sums_gb": resident / GB,
            "transient_per_batch_gb": transient / GB, "forward_gb": forward / GB, "weights_gb": weights / GB,
            "total_gb": total / GB, "fits_80gb": total < gpu_gb * GB,
            "without_streaming_gb": layers * neurons * 2 * 1000 * 60 / GB}  # 1k examples x 60 text tokens, bf16


def main() -> None:
    import torch

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT.parent / "shared" / "models" / "stories260K"))
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--limit", type=int, default=872)
    parser.add_argument("--words", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--plan-words", default="40,200,1000")
    args = parser.parse_args()

    m = measure_model(args.model, args.task, args.limit, args.words, args.batch_size)
    print(f"model {m['model']}: {m['examples']} examples, {m['tokens']} tokens, {m['neurons']} neurons, "
          f"{m['words']} words, {m['labelled']} labelled")
    print(f"  per 1k examples: words {m['words_s_per_1k']:.2f} s, encode {m['encode_s_per_1k']:.2f} s, "
          f"stream {m['stream_s_per_1k']:.2f} s (bare forward {m['bare_forward_s_per_1k']:.2f} s, "
          f"hooks x{m['hook_overhead']:.2f}); labelling {m['label_s']:.3f} s")
    print(f"  resident state {m['state_mb']:.2f} MB (independent of the number of examples); "
          f"peak RSS {m['peak_rss_gb']:.2f} GB, growth during streaming {m['rss_growth_during_stream_gb']:.3f} GB")
    for k in [int(x) for x in args.plan_words.split(",")]:
        h = measure_7b_hook(k)
        p = plan_7b(k)
        print(f"7B plan, K={k}: resident sums {p['resident_sums_gb']:.2f} GB + per-batch transient "
              f"{p['transient_per_batch_gb']:.2f} GB + forward {p['forward_gb']:.2f} GB + bf16 weights "
              f"{p['weights_gb']:.1f} GB = {p['total_gb']:.1f} GB -> fits 80 GB: {p['fits_80gb']} "
              f"(storing per-token activations of 1k examples instead: {p['without_streaming_gb']:.0f} GB)")
        print(f"  hook body on this CPU: {h['s_per_layer_batch']:.3f} s per layer-batch "
              f"[{h['batch']}x{h['seq']}x11008], {h['s_per_7b_batch_32_layers']:.2f} s per 32-layer batch")


if __name__ == "__main__":
    main()
