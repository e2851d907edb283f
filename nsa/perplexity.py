"""WikiText-2 / C4 perplexity exactly as the Wanda and SparseGPT code computes it.

- wikitext2: `tokenizer("\\n\\n".join(test_rows))`; c4: `tokenizer(" ".join(first 1100 validation docs))`
  cut to the first 256 * seqlen tokens (SparseGPT's `get_c4` eval set).
- The token stream is cut into `n = len // seqlen` non-overlapping windows (the tail is dropped); each window
  is scored on its own (no carried context) and `ppl = exp(mean over windows of the window's mean NLL)`.
  (The reference multiplies each window's mean loss by seqlen and divides the sum by n * seqlen, which
  is the same number.) `seqlen` defaults to the model's `max_position_embeddings`, as in Wanda.

Caveat (see ../shared/data/README.md): the local wikitext2 copy lacks the split's 1467 empty rows, so the
"\\n\\n" join differs slightly from the hub's and numbers are close to, not equal to, published ones.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable

from nsa import datasets as D
from nsa.calibration import tokenizer_fingerprint
from nsa.errors import NSAError
from pruners import ProgressEvent

C4_DOCS = 1100
C4_WINDOWS = 256


def eval_tokens(dataset: str, tokenizer, seqlen: int):
    """The evaluation token stream (LongTensor[1, n_tokens]) of `wikitext2` or `c4`."""
    spec = D.get_task(dataset)
    if spec.kind != "perplexity":
        raise NSAError(f"perplexity is computed on {', '.join(D.list_tasks(kind='perplexity'))}, not {dataset!r}")

    texts = tuple(r["text"] for r in D.load_examples(spec))
    ids = _tokenized(dataset, texts, tokenizer_fingerprint(tokenizer), _TokenizerRef(tokenizer))
    return ids[:, : C4_WINDOWS * seqlen] if dataset == "c4" else ids


class _TokenizerRef:
    """Carries the tokenizer into the cached function without making it part of the cache key."""
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other) -> bool:
        return isinstance(other, _TokenizerRef)


@lru_cache(maxsize=4)
def _tokenized(dataset: str, texts: tuple[str, ...], _fingerprint: str, ref: _TokenizerRef):
    """The joined corpus tokenized once per (dataset rows, tokenizer) in a process (dense and pruned runs)."""
    if dataset == "c4":
        return ref.tokenizer(" ".join(texts[:C4_DOCS]), return_tensors="pt").input_ids
    return ref.tokenizer("\n\n".join(texts), return_tensors="pt").input_ids


def perplexity(model, tokenizer, dataset: str = "wikitext2", seqlen: int | None = None, batch_size: int = 1,
               max_windows: int | None = None, progress: Callable | None = None) -> dict:
    """Perplexity of `model` on `dataset`; also returns every window's mean NLL (`window_nll`)."""
    import torch

    seqlen = seqlen or int(getattr(model.config, "max_position_embeddings", 2048))
    if seqlen < 2:
        raise NSAError(f"seqlen must be at least 2, got {seqlen}")
    if batch_size < 1:
        raise NSAError(f"batch_size must be a positive integer, got {batch_size}")
    D.check_limit(max_windows)
    ids = eval_tokens(dataset, tokenizer, seqlen)
    n = ids.numel() // seqlen
    if n == 0:
        raise NSAError(f"{dataset}: only {ids.numel()} tokens, fewer than one window of seqlen={seqlen}")
    n = min(n, max_windows) if max_windows else n
    device = next(model.parameters()).device
    nlls: list[float] = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            j = min(i + batch_size, n)
            inputs = ids[:, i * seqlen: j * seqlen].reshape(j - i, seqlen).to(device)  # [b, seqlen]
            nlls.extend(window_nll(model, inputs).tolist())
            if progress is not None:
                progress(ProgressEvent(fraction=j / n, message=f"{dataset} window {j}/{n}", stage="perplexity"))
    mean_nll = sum(nlls) / len(nlls)
    return {"dataset": dataset, "ppl": math.exp(mean_nll), "mean_nll": mean_nll, "n_windows": n,
            "seqlen": seqlen, "n_tokens": n * seqlen, "window_nll": nlls}


def window_nll(model, inputs):
    """Mean next-token NLL of each window (float32 [b]); inputs LongTensor[b, seqlen]."""
    import torch.nn.functional as F

    logits = model(inputs).logits.float()  # [b, seqlen, vocab]
    shift_logits = logits[:, :-1, :]
    shift_labels = inputs[:, 1:]
    loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           reduction="none").view(inputs.shape[0], -1)  # [b, seqlen - 1]
    return loss.mean(dim=1)
