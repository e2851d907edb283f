"""What an MLP neuron writes: the logit lens on its output weights (weights only, no forward pass).

Neuron (layer L, index i) adds `a · w` to the residual stream, `w` = column i of L's down projection (row i of
GPT-2's Conv1D). Read through the model's head, `w` promotes the tokens whose logits it raises most and
suppresses those it lowers most: logits = W_U (g ⊙ w), W_U the unembedding (`lm_head`), g the final norm's weight.
Choice: the final norm is applied to a direction as its weight vector only (elementwise scale, as RMSNorm's and
LayerNorm's weights act on every vector): the data-dependent 1/rms scale multiplies all logits alike (ranks
unchanged), and LayerNorm's mean subtraction and bias are left out (they do not depend on the neuron).

Pruned = the same column with the run's mask applied (what survived; SparseGPT's updated weights when the run
kept them). `top_tokens` reads one neuron; `all_top_tokens` every neuron of the model in blocks of columns (the
export), one matrix product per block.
"""
from __future__ import annotations

from typing import Callable

import torch

from nsa.errors import NSAError
from nsa.neurons import layer_sizes, neuron_sites
from pruners import ProgressEvent

NORM_NAMES = ("norm", "final_layer_norm", "ln_f", "final_norm", "norm_f")


def check_neuron(model, layer: int, index: int) -> None:
    """`NSAError` naming the model's size when (layer, index) is not one of its MLP neurons."""
    sizes = layer_sizes(neuron_sites(model))
    if not 0 <= int(layer) < len(sizes):
        raise NSAError(f"layer {layer} is outside the model: it has {len(sizes)} decoder layers (0-{len(sizes) - 1})")
    if not 0 <= int(index) < sizes[layer]:
        raise NSAError(f"neuron {index} is outside layer {layer}: it has {sizes[layer]} MLP neurons "
                       f"(0-{sizes[layer] - 1})")


def final_norm_weight(model) -> torch.Tensor | None:
    """The final norm's weight vector [hidden] (None when the model has no final norm with a weight)."""
    base = model.base_model
    for holder in (base, getattr(base, "decoder", None)):
        for name in NORM_NAMES:
            norm = getattr(holder, name, None) if holder is not None else None
            if norm is not None and getattr(norm, "weight", None) is not None:
                return norm.weight.detach()
    return None


def unembedding(model) -> torch.Tensor:
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise NSAError(f"{type(model).__name__} has no output embedding (lm_head) to read neurons through")
    return head.weight.detach()  # [vocab, hidden]


def output_columns(model, layer: int, start: int, stop: int, masks: dict | None = None,
                   weights: dict | None = None) -> torch.Tensor:
    """The output weight vectors of neurons start..stop-1 of `layer` as [hidden, n] (pruned when masks are
    given: the run's weights when it kept updated ones, masked entries zeroed)."""
    site = neuron_sites(model)[layer]
    w = site.out_module.weight.detach()
    param = site.out_param
    if weights is not None and param in weights:
        w = weights[param].to(w.device, w.dtype)
    cols = w[start:stop, :].T if site.conv1d else w[:, start:stop]
    if masks is not None and param in masks:
        m = masks[param].to(w.device).bool()
        keep = ~(m[start:stop, :].T if site.conv1d else m[:, start:stop])
        cols = cols * keep
    return cols.float()


def _logits(model, cols: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logit contributions of output vectors [hidden, n]."""
    g = final_norm_weight(model)
    if g is not None:
        cols = cols * g.float()[:, None]
    return (unembedding(model).float() @ cols).T


class _Vocab:
    """Token id -> the text it decodes to (decoded once per id). A token that is part of a multi-byte character
    decodes to U+FFFD alone; it is shown as the tokenizer's own piece instead (e.g. `<0xE2>`, `Ã¢`), which can
    be told apart from other such tokens."""

    def __init__(self, tokenizer):
        self.tokenizer, self.known = tokenizer, {}

    def __call__(self, ids: list[int]) -> list[str]:
        for i in ids:
            if i not in self.known:
                self.known[i] = self._text(i)
        return [self.known[i] for i in ids]

    def _text(self, i: int) -> str:
        if self.tokenizer is None:
            return str(i)
        text = self.tokenizer.decode([i])
        if "\ufffd" in text:
            piece = self.tokenizer.convert_ids_to_tokens(i)
            return piece if isinstance(piece, str) and piece else f"<token {i}>"
        return text


def _ranked(vocab: _Vocab, logits: torch.Tensor, k: int) -> dict:
    k = min(k, logits.shape[-1])
    top, bottom = logits.topk(k), (-logits).topk(k)
    return {"promoted": vocab(top.indices.tolist()),
            "promoted_logits": [round(v, 5) for v in top.values.tolist()],
            "suppressed": vocab(bottom.indices.tolist()),
            "suppressed_logits": [round(-v, 5) for v in bottom.values.tolist()]}


def top_tokens(model, tokenizer, layer: int, index: int, masks: dict | None = None, weights: dict | None = None,
               k: int = 10) -> dict:
    """{"dense": ranked, "pruned": ranked or None, "kept_norm": |pruned w| / |dense w|, "cosine"} where ranked =
    {promoted, promoted_logits, suppressed, suppressed_logits} (top-k tokens by logit contribution of w)."""
    check_neuron(model, layer, index)
    vocab = _Vocab(tokenizer)
    with torch.no_grad():
        dense = output_columns(model, layer, index, index + 1)
        out = {"layer": int(layer), "index": int(index), "dense": _ranked(vocab, _logits(model, dense)[0], k),
               "pruned": None, "kept_norm": None, "cosine": None}
        if masks is not None:
            pruned = output_columns(model, layer, index, index + 1, masks, weights)
            out["pruned"] = _ranked(vocab, _logits(model, pruned)[0], k)
            d, p = dense.flatten(), pruned.flatten()
            norm = float(d.norm())
            out["kept_norm"] = float(p.norm()) / norm if norm else None
            out["cosine"] = float(d @ p) / (norm * float(p.norm())) if norm and float(p.norm()) else None
    return out


def all_top_tokens(model, tokenizer, masks: dict | None = None, weights: dict | None = None, k: int = 5,
                   block: int = 256, progress: Callable | None = None) -> dict[tuple[int, int], dict]:
    """{(layer, index): {"dense": ranked, "pruned": ranked or None}} for every MLP neuron, `block` neurons per
    matrix product (memory: block × vocab floats)."""
    sizes = layer_sizes(neuron_sites(model))
    total, done, out, vocab = sum(sizes), 0, {}, _Vocab(tokenizer)
    with torch.no_grad():
        for layer, n in enumerate(sizes):
            for start in range(0, n, block):
                stop = min(n, start + block)
                dense = _logits(model, output_columns(model, layer, start, stop))
                pruned = (_logits(model, output_columns(model, layer, start, stop, masks, weights))
                          if masks is not None else None)
                for j in range(stop - start):
                    out[layer, start + j] = {"dense": _ranked(vocab, dense[j], k),
                                             "pruned": _ranked(vocab, pruned[j], k) if pruned is not None else None}
                done += stop - start
                if progress is not None:
                    progress(ProgressEvent(done / total, f"output tokens {done}/{total} neurons", "output tokens"))
    return out
