"""MLP neurons: where they are, how to read them, how to silence them, and how much pruning removed.

A neuron is one unit of a decoder layer's MLP intermediate activation, the input of the down projection
(act(gate)*up for SwiGLU, act(fc1) for OPT, act(c_fc) for GPT-2, act(dense_h_to_4h) for NeoX); its id is
(layer, index). The sites come from `pruners.families.mlp_sites` (one per decoder layer): a forward-pre-hook
on `site.out_module` sees `[batch, seq, n_neurons]`. Reading never modifies the model (the hook returns None);
`ablate` zeros chosen units of that input (validation).

Pruned fractions come from the masks alone (`pruners.families.mlp_sites_from_names`): "in" = share of the
neuron's row in the input weights (gate and up together, or fc1) that the mask removed, "out" = share of its
column in the down projection (fc2 / c_proj). GPT-2's Conv1D stores `[in, out]`, so rows and columns swap.

Also here: prompt/word/token alignment used by steps 1-3 (`text_regions`, `tokens_of_words`).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

from nsa.errors import NSAError
from pruners.errors import PruneError
from pruners.families import mlp_sites, mlp_sites_from_names


# --- sites ------------------------------------------------------------------------------------------------
def neuron_sites(model) -> list:
    """`pruners.families.mlp_sites(model)`, with a clear error when no MLP intermediate is found."""
    try:
        sites = mlp_sites(model)
    except PruneError as err:
        raise NSAError(f"no MLP intermediate found in {type(model).__name__}: {err}") from None
    if not sites:
        raise NSAError(f"no MLP intermediate found in {type(model).__name__}: it has no decoder layer with a "
                       f"down projection (supported: Llama, Mistral, Qwen2, OPT, GPT-2, GPT-NeoX)")
    return sites


def layer_sizes(sites) -> list[int]:
    """Neurons per layer (the down projection's input width)."""
    return [_in_features(site.out_module) for site in sites]


def _in_features(module) -> int:
    if hasattr(module, "in_features"):
        return int(module.in_features)
    if hasattr(module, "nx"):  # GPT-2 Conv1D
        return int(module.nx)
    return int(module.weight.shape[0] if getattr(module, "weight", None) is not None else 0)


@contextlib.contextmanager
def capture(sites, on_activation: Callable[[int, "object"], None]) -> Iterator[None]:
    """Call `on_activation(layer_position, acts[batch, seq, n])` for every site during forwards in the block."""
    handles = []
    for pos, site in enumerate(sites):
        def hook(_module, args, _pos=pos):
            on_activation(_pos, args[0].detach())
            return None

        handles.append(site.out_module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def ablate(sites, neurons: dict[int, list[int]]) -> Iterator[None]:
    """Zero neurons {layer_position: [index, ...]} (the down projection's input) while the block runs."""
    import torch

    handles = []
    for pos, indices in neurons.items():
        if not indices:
            continue
        idx_cpu = torch.as_tensor(sorted(set(int(i) for i in indices)), dtype=torch.long)

        def hook(_module, args, _idx=idx_cpu):
            x = args[0].clone()
            x[..., _idx.to(x.device)] = 0
            return (x, *args[1:])

        handles.append(sites[pos].out_module.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# --- pruned fractions -------------------------------------------------------------------------------------
def removed(frac_in, frac_out):
    """A neuron computes nothing when its whole input rows (gate and up, or fc1) or its whole output column (down,
    or fc2) are pruned: what a structured method (FLAP, ShortGPT) does to whole channels. Scalars or arrays."""
    return (frac_in >= 1.0) | (frac_out >= 1.0)


def pruned_fractions(masks: dict) -> list[dict]:
    """One row per MLP neuron: layer, index, frac_in, frac_out (1 = pruned in the masks), removed (`removed`)."""
    try:
        sites = mlp_sites_from_names(list(masks))
    except Exception as err:  # noqa: BLE001 - the engine's own message says what did not match
        raise NSAError(f"the masks name no MLP weights this tool recognises ({err})") from None
    if not sites:
        raise NSAError("the masks contain no MLP down-projection weights; per-neuron fractions need them")
    rows = []
    for site in sites:
        conv = bool(getattr(site, "conv1d", False))
        out = masks[site.out_param].float()
        frac_out = (out.mean(dim=1) if conv else out.mean(dim=0))  # [n_neurons]
        ins = [masks[p].float() for p in site.in_params if p in masks]
        if ins:
            frac_in = sum((m.mean(dim=0) if conv else m.mean(dim=1)) for m in ins) / len(ins)
        else:
            frac_in = frac_out * 0
        for i, (fi, fo) in enumerate(zip(frac_in.tolist(), frac_out.tolist())):
            rows.append({"layer": int(site.layer), "index": i, "frac_in": fi, "frac_out": fo,
                         "removed": bool(removed(fi, fo))})
    return rows


# --- prompts, words and tokens ----------------------------------------------------------------------------
def text_regions(spec, example: dict, prompt: str) -> list[tuple[int, int]]:
    """Character spans of the example's own text fields inside its prompt (template words, the chat template and
    the few-shot examples excluded: the search starts after them)."""
    regions, cursor = [], len((spec.chat or ("", ""))[0]) + len(spec.shots)
    for name in spec.text_fields:
        if name not in example:
            continue
        value = str(example[name])
        start = prompt.find(value, cursor)
        if start < 0 or not value:
            continue
        regions.append((start, start + len(value)))
        cursor = start + len(value)
    return regions


def tokens_of_words(offsets, spans: list[tuple[str, int, int]]) -> list[list[int]]:
    """Token positions overlapping each (word, start, end) span, from a fast tokenizer's offset mapping.

    A token overlaps a word when their character ranges intersect on a non-space character (a leading-space
    token " awful" belongs to "awful"); special tokens have empty (0, 0) offsets and are never matched.
    """
    out: list[list[int]] = [[] for _ in spans]
    j = 0
    order = sorted(range(len(spans)), key=lambda k: spans[k][1])
    for t, (s, e) in enumerate(offsets):
        if e <= s:
            continue
        while j < len(order) and spans[order[j]][2] <= s:
            j += 1
        k = j
        while k < len(order) and spans[order[k]][1] < e:
            out[order[k]].append(t)
            k += 1
    return out


def check_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise NSAError(f"{type(tokenizer).__name__} is a slow tokenizer; NSA maps tokens to words through a "
                       f"fast tokenizer's offset mapping (load it with use_fast=True / a tokenizer.json)")
