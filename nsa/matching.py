"""NSA step 2: neuron-word matching on the dense model, streamed.

The task prompts (`prompt_for`, exactly what the evaluator scores; encoded as lm-evaluation-harness encodes
them for causal models: no special tokens, left-truncated to the context) run through the model with
forward-pre-hooks on each layer's down projection. Tokens map to words through the fast tokenizer's offset
mapping; only words inside the example's own text fields count (never the template's).

Choices (documented in docs/nsa.md):
- A word occurrence is represented by the activation at the word's *last* token: in a causal model that is
  the first position that has seen the whole word.
- The reference population of a neuron is every token of the example texts (template tokens excluded, since
  they repeat identically in every prompt): mean mu and standard deviation sd over those N tokens.
- Per (neuron, word) with k occurrences: summed activation (the paper's measure), mean activation, and
  selectivity = (mean - mu) / sd.
- Significance: a permutation test of word positions. Under the null, the word's k occurrences are k
  positions drawn at random without replacement from the N text tokens; the permutation distribution of
  their mean has mean mu and variance sd^2/k * (N-k)/(N-1) exactly, and is approximately normal for k >=
  `min_occurrences` (finite-population CLT), giving a one-sided z test for "more active on this word".
  Words with fewer occurrences are not tested. Multiple comparisons: Benjamini-Hochberg over every tested
  (neuron, word) pair of the model at FDR `alpha`. A pair counts only if it is also large
  (selectivity >= `min_selectivity`). Caveat: tokens of one text are not independent; the test treats
  positions as exchangeable, as a permutation of positions does.
- Label: the neuron's top `label_size` significant words by selectivity; prefixed with their cluster when
  they all share one ("negative: awful, bland, worst"), else "mixed: ...".

Only running sums are kept: per layer sum and sum of squares over text tokens [N], per word summed
activation [K, N], and the top `top_examples` example maxima [M, N]. Per-token activations of all neurons
are never stored; a second, small pass re-runs only the top examples of labelled neurons to keep their token
activations for the app.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.neurons import capture, check_fast_tokenizer, text_regions, tokens_of_words
from nsa.words import word_spans
from pruners import ProgressEvent


@dataclass
class MatchConfig:
    """Step 2 settings: batch size, significance (alpha, min_occurrences, min_selectivity), label size."""
    batch_size: int = 16
    min_occurrences: int = 10
    alpha: float = 0.05
    min_selectivity: float = 1.0
    label_size: int = 3
    top_examples: int = 5
    top_example_neurons: int = 5000  # labelled neurons (most selective first) whose top examples are kept
    max_length: int | None = None

    def key(self) -> dict:
        return asdict(self) | {"batch_size": None}  # batch size does not change results


@dataclass
class Encoded:
    """One prompt: token ids, text-token positions, and (word id, last-token position) occurrences."""
    index: int
    ids: list[int]
    offsets: list[tuple[int, int]]
    prompt: str
    text_positions: list[int]
    occurrences: list[tuple[int, int]]  # (word id, token position)
    words_present: list[str] = field(default_factory=list)


def encode(spec, examples: list[dict], tokenizer, words: list[str], max_length: int) -> list[Encoded]:
    """Tokenize the task prompts and locate the influential words' occurrences (by last token)."""
    check_fast_tokenizer(tokenizer)
    word_id = {w: k for k, w in enumerate(words)}
    out = []
    for ex in examples:
        prompt = D.prompt_for(spec, ex)
        enc = tokenizer(prompt, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        cut = max(0, len(ids) - max_length)
        ids, offsets = ids[cut:], offsets[cut:]
        text_pos, occ, present = set(), [], []
        for start, end in text_regions(spec, ex, prompt):
            text_pos.update(t for t, (s, e) in enumerate(offsets) if e > s and s < end and e > start)
            spans = [(w, s + start, e + start) for w, s, e in word_spans(prompt[start:end])]
            for (w, _s, _e), toks in zip(spans, tokens_of_words(offsets, spans)):
                if w in word_id and toks:
                    occ.append((word_id[w], toks[-1]))
                    present.append(w)
        out.append(Encoded(int(ex.get("index", len(out))), ids, offsets, prompt, sorted(text_pos), occ,
                           list(dict.fromkeys(present))))
    return out


def context_length(model, tokenizer, max_length: int | None) -> int:
    if max_length:
        return int(max_length)
    n = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    return int(n or 2048)


class Accumulator:
    """Running sums per layer: text-token count/sum/sum of squares, per-word sums, top example maxima."""
    def __init__(self, sizes: list[int], n_words: int, top_m: int, device, dtype=None):
        import torch

        dtype = dtype or torch.float64
        self.sizes, self.n_words, self.top_m = sizes, n_words, top_m
        self.n_tokens = 0
        self.word_count = torch.zeros(n_words, dtype=torch.long)
        self.s1 = [torch.zeros(n, dtype=dtype, device=device) for n in sizes]
        self.s2 = [torch.zeros(n, dtype=dtype, device=device) for n in sizes]
        self.wsum = [torch.zeros(n_words, n, dtype=dtype, device=device) for n in sizes]
        self.top_val = [torch.full((top_m, n), -math.inf, dtype=torch.float32, device=device) for n in sizes]
        self.top_idx = [torch.full((top_m, n), -1, dtype=torch.long, device=device) for n in sizes]
        self._batch = None

    def start_batch(self, batch: list[Encoded], seq_len: int, device) -> None:
        """Precompute the gather indices of a padded batch (shared by every layer's hook)."""
        import torch

        tb = [(b, t) for b, e in enumerate(batch) for t in e.text_positions]
        ob = [(b, t, w) for b, e in enumerate(batch) for w, t in e.occurrences]
        mask = torch.zeros(len(batch), seq_len, dtype=torch.bool)
        for b, t in tb:
            mask[b, t] = True
        self._batch = {
            "tb": torch.tensor([x[0] for x in tb], dtype=torch.long, device=device),
            "tt": torch.tensor([x[1] for x in tb], dtype=torch.long, device=device),
            "ob": torch.tensor([x[0] for x in ob], dtype=torch.long, device=device),
            "ot": torch.tensor([x[1] for x in ob], dtype=torch.long, device=device),
            "ow": torch.tensor([x[2] for x in ob], dtype=torch.long, device=device),
            "mask": mask.to(device),
            "index": torch.tensor([e.index for e in batch], dtype=torch.long, device=device),
        }
        self.n_tokens += len(tb)
        for _b, _t, w in ob:
            self.word_count[w] += 1

    def __call__(self, layer: int, acts) -> None:
        """Hook body: acts [batch, seq, n] of layer `layer`."""
        import torch

        b = self._batch
        text = acts[b["tb"], b["tt"]].to(self.s1[layer].dtype)  # [P, n]
        self.s1[layer] += text.sum(0)
        self.s2[layer] += (text * text).sum(0)
        if len(b["ow"]):
            occ = acts[b["ob"], b["ot"]].to(self.wsum[layer].dtype)  # [O, n]
            self.wsum[layer].index_add_(0, b["ow"], occ)
        if self.top_m:
            masked = acts.float().masked_fill(~b["mask"][..., None], -math.inf)
            ex_max = masked.amax(dim=1)  # [batch, n]
            vals = torch.cat([self.top_val[layer], ex_max], 0)  # [top_m + batch, n]
            idx = torch.cat([self.top_idx[layer], b["index"][:, None].expand_as(ex_max)], 0)
            # ties (common: prompts that open alike share their first text token's activation exactly) go to
            # the lower example index, whatever the batching or order: sort by index, then stably by value
            by_index = idx.argsort(dim=0, stable=True)
            vals, idx = vals.gather(0, by_index), idx.gather(0, by_index)
            top = vals.argsort(dim=0, descending=True, stable=True)[: self.top_m]
            self.top_val[layer] = vals.gather(0, top)
            self.top_idx[layer] = idx.gather(0, top)

    def state(self) -> dict:
        """Tensors for caching (safetensors)."""
        import torch

        out = {"word_count": self.word_count, "n_tokens": torch.tensor([self.n_tokens])}
        for layer in range(len(self.sizes)):
            out |= {f"s1.{layer}": self.s1[layer], f"s2.{layer}": self.s2[layer],
                    f"wsum.{layer}": self.wsum[layer], f"top_val.{layer}": self.top_val[layer],
                    f"top_idx.{layer}": self.top_idx[layer]}
        return {k: v.detach().cpu().contiguous() for k, v in out.items()}


def padded(batch: list[Encoded], device):
    """(ids, attention mask) [batch, longest] with right padding: causal positions before a pad are unaffected,
    so every real token sees exactly what it sees alone."""
    import torch

    seq = max(len(e.ids) for e in batch)
    ids = torch.zeros((len(batch), seq), dtype=torch.long)
    att = torch.zeros((len(batch), seq), dtype=torch.long)
    for b, e in enumerate(batch):
        ids[b, : len(e.ids)] = torch.tensor(e.ids)
        att[b, : len(e.ids)] = 1
    return ids.to(device), att.to(device)


def by_length(encoded: list[Encoded], batch_size: int) -> list[list[Encoded]]:
    """Batches of similar length (longest first, ties in the given order), as the harness batches: padding in
    one batch is then a few tokens instead of the longest prompt's. Every token's activation is its own (right
    padding, causal attention), so results do not depend on the order; SST-2's 200 review prompts pad to 6,128
    tokens this way against 10,160 in file order (5,738 real)."""
    order = sorted(encoded, key=lambda e: -len(e.ids))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def stream(model, encoded: list[Encoded], sites, sizes: list[int], n_words: int, batch_size: int,
           top_m: int = 0, progress: Callable | None = None, message: str = "matching") -> Accumulator:
    """Run every encoded prompt through `model` once, accumulating the running sums."""
    import torch

    device = next(model.parameters()).device
    acc = Accumulator(sizes, n_words, top_m, device)
    was_training = model.training
    model.eval()
    done = 0
    with torch.no_grad(), capture(sites, acc):
        for batch in by_length(encoded, batch_size):
            ids, att = padded(batch, device)
            acc.start_batch(batch, ids.shape[1], device)
            model.base_model(input_ids=ids, attention_mask=att, use_cache=False)  # no lm_head: only MLPs are read
            done += len(batch)
            if progress is not None:
                progress(ProgressEvent(done / len(encoded), f"{message} {done}/{len(encoded)} prompts", message))
    model.train(was_training)
    return acc


# --- statistics -------------------------------------------------------------------------------------------
@dataclass
class LayerStats:
    """Per-layer derived statistics ([K, N] unless noted)."""
    mu: "object"  # [N]
    sd: "object"  # [N]
    mean: "object"  # [K, N] mean activation on each word
    summed: "object"  # [K, N]
    selectivity: "object"
    z: "object"
    tested: "object"  # [K] bool: word has >= min_occurrences


def layer_stats(state: dict, layer: int, min_occurrences: int) -> LayerStats:
    """Mean, sd, per-word mean/selectivity and the permutation z of one layer from the running sums."""
    import torch

    n = float(state["n_tokens"][0])
    if n < 2:
        raise NSAError("fewer than two text tokens were seen; use more examples")
    k = state["word_count"].to(torch.float64)
    s1, s2, wsum = state[f"s1.{layer}"].double(), state[f"s2.{layer}"].double(), state[f"wsum.{layer}"].double()
    mu = s1 / n
    sd = (s2 / n - mu * mu).clamp_min(0).sqrt()
    mean = wsum / k.clamp_min(1)[:, None]
    safe_sd = torch.where(sd > 0, sd, torch.ones_like(sd))
    sel = torch.where(sd > 0, (mean - mu) / safe_sd, torch.zeros_like(mean))
    fpc = ((n - k) / (n - 1)).clamp_min(0)  # finite-population correction
    se = safe_sd[None, :] * (fpc / k.clamp_min(1)).sqrt()[:, None]
    z = torch.where((se > 0) & (sd > 0), (mean - mu) / se.clamp_min(1e-30), torch.zeros_like(mean))
    tested = k >= max(min_occurrences, 1)
    return LayerStats(mu, sd, mean, wsum, sel, z, tested)


def upper_p(z):
    """One-sided normal p-value P(Z >= z)."""
    import torch

    return 0.5 * torch.special.erfc(z / math.sqrt(2.0))


def benjamini_hochberg(p):
    """BH-adjusted q-values of a 1-D tensor of p-values (monotone, capped at 1)."""
    import torch

    m = p.numel()
    if m == 0:
        return p.clone()
    order = torch.argsort(p)
    ranked = p[order] * m / torch.arange(1, m + 1, dtype=p.dtype, device=p.device)
    ranked = torch.flip(torch.cummin(torch.flip(ranked, [0]), 0).values, [0]).clamp(max=1.0)
    q = torch.empty_like(p)
    q[order] = ranked
    return q


@dataclass
class Matching:
    """Step 2 result: per-layer stats, significance and the labelled neurons."""
    words: list[str]
    clusters: list[str]  # cluster of each word
    stats: list[LayerStats]
    q: list  # per layer [K, N] q-values (1 where untested)
    significant: list  # per layer [K, N] bool
    labels: list[dict]
    n_neurons: int
    n_tokens: int
    word_count: list[int]
    config: MatchConfig


def label_neurons(state: dict, words: list[str], clusters: list[str], config: MatchConfig) -> Matching:
    """Significance (permutation z, BH across the model) and labels from the running sums."""
    import torch

    n_layers = sum(1 for k in state if k.startswith("s1."))
    stats = [layer_stats(state, layer, config.min_occurrences) for layer in range(n_layers)]
    ps = [torch.where(s.tested[:, None], upper_p(s.z), torch.ones_like(s.z)) for s in stats]
    tested_p = torch.cat([p[s.tested].flatten() for p, s in zip(ps, stats)])
    q_flat = benjamini_hochberg(tested_p)
    qs, offset = [], 0
    for p, s in zip(ps, stats):
        q = torch.ones_like(p)
        count = int(s.tested.sum()) * p.shape[1]
        q[s.tested] = q_flat[offset: offset + count].reshape(-1, p.shape[1])
        offset += count
        qs.append(q)
    sig = [(q <= config.alpha) & (s.selectivity >= config.min_selectivity) for q, s in zip(qs, stats)]
    labels = []
    for layer, (s, q, g) in enumerate(zip(stats, qs, sig)):
        for neuron in torch.nonzero(g.any(0)).flatten().tolist():
            labels.append(_label(layer, neuron, s, q, g, words, clusters, config.label_size))
    return Matching(words, clusters, stats, qs, sig, labels, sum(s.mu.numel() for s in stats),
                    int(state["n_tokens"][0]), state["word_count"].tolist(), config)


def _label(layer, neuron, s: LayerStats, q, g, words, clusters, size) -> dict:
    ks = torch_nonzero(g[:, neuron])
    ks.sort(key=lambda k: -float(s.selectivity[k, neuron]))
    top = ks[:size]
    top_clusters = {clusters[k] for k in top}
    cluster = top_clusters.pop() if len(top_clusters) == 1 else "mixed"
    top_words = [words[k] for k in top]
    return {"layer": layer, "index": neuron, "label": f"{cluster}: {', '.join(top_words)}", "cluster": cluster,
            "words": top_words, "selectivity": [float(s.selectivity[k, neuron]) for k in top],
            "q_value": [float(q[k, neuron]) for k in top],
            "mean_activation": [float(s.mean[k, neuron]) for k in top],
            "summed_activation": [float(s.summed[k, neuron]) for k in top],
            "n_significant_words": len(ks), "top_selectivity": float(s.selectivity[top[0], neuron]),
            "neuron_mean": float(s.mu[neuron]), "neuron_std": float(s.sd[neuron])}


def torch_nonzero(mask) -> list[int]:
    import torch

    return torch.nonzero(mask).flatten().tolist()


# --- top examples ------------------------------------------------------------------------------------------
def top_examples(model, sites, encoded: list[Encoded], state: dict, labels: list[dict], texts: dict[int, str],
                 limit: int = 300, batch_size: int = 16) -> list[dict]:
    """Token activations of labelled neurons on their top examples (a second pass over those examples only).

    Kept for the `limit` most selective labelled neurons, so the table stays app-sized on large models.
    """
    if not labels:
        return []
    labels = sorted(labels, key=lambda lab: -lab["top_selectivity"])[:limit]
    by_index = {e.index: e for e in encoded}
    wanted: dict[int, list[tuple[int, int, int, float]]] = {}  # example -> [(layer, neuron, rank, max)]
    for lab in labels:
        layer, neuron = lab["layer"], lab["index"]
        for rank, (idx, val) in enumerate(zip(state[f"top_idx.{layer}"][:, neuron].tolist(),
                                              state[f"top_val.{layer}"][:, neuron].tolist())):
            if idx >= 0 and idx in by_index:
                wanted.setdefault(idx, []).append((layer, neuron, rank, val))
    acts = token_activations(model, sites, by_index, {i: [(l, n) for l, n, _, _ in w] for i, w in wanted.items()},
                             batch_size)
    rows = []
    for idx, entries in wanted.items():
        e = by_index[idx]
        tokens = [e.prompt[e.offsets[t][0]:e.offsets[t][1]] for t in e.text_positions]
        for layer, neuron, rank, val in entries:
            rows.append({"layer": layer, "index": neuron, "rank": rank, "example": idx, "max_activation": val,
                         "text": texts.get(idx, ""), "tokens": tokens, "activations": acts[idx, layer, neuron],
                         "words": e.words_present})
    rows.sort(key=lambda r: (r["layer"], r["index"], r["rank"]))
    return rows


def token_activations(model, sites, by_index: dict[int, Encoded], wanted: dict[int, list[tuple[int, int]]],
                      batch_size: int = 16) -> dict[tuple[int, int, int], list[float]]:
    """{(example, layer, neuron): activation at each text token of the example} for the wanted neurons of each
    example, by a pass over those examples only (the dense model for top examples, the pruned one beside it)."""
    import torch

    device = next(model.parameters()).device
    # only the wanted neurons' columns leave the hook: [batch, seq, n_kept] per layer
    kept: dict[int, list[int]] = {}
    for pairs in wanted.values():
        for layer, neuron in pairs:
            if neuron not in kept.setdefault(layer, []):
                kept[layer].append(neuron)
    columns = {layer: torch.tensor(idx, device=device) for layer, idx in kept.items()}
    column_of = {(layer, n): k for layer, idx in kept.items() for k, n in enumerate(idx)}
    out: dict[tuple[int, int, int], list[float]] = {}
    for batch in by_length([by_index[i] for i in sorted(wanted)], batch_size):
        captured: dict[int, object] = {}
        ids, att = padded(batch, device)
        with torch.no_grad(), capture(sites, lambda layer, a: captured.__setitem__(
                layer, a[..., columns[layer]].float().cpu() if layer in columns else None)):
            model.base_model(input_ids=ids, attention_mask=att, use_cache=False)  # no lm_head: only MLPs are read
        for b, e in enumerate(batch):
            pos = e.text_positions
            for layer, neuron in wanted[e.index]:
                out[e.index, layer, neuron] = [round(a, 4) for a in
                                               captured[layer][b, pos, column_of[(layer, neuron)]].tolist()]
    return out
