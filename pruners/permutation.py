"""Input-channel permutation for N:M masks (RIA's heuristic channel reallocation), kept and applied to the model.

Why: an N:M mask chosen in a permuted column order only helps if the weights are stored in that order. The RIA
reference computes the mask on `W[:, index]` and scatters it back (`W_mask[:, index] = W_mask_permute`),
which throws the permutation away — the saved weights are then not N:M. Here the permutation is applied to the
model: a Linear's input columns are permuted together with the output rows of the Linear producing that input,
which leaves the model's function unchanged and makes every saved mask N:M in the model's own column order.

Only two Linears per decoder layer have such a private producer (Llama / Mistral / Qwen2):
  * `mlp.down_proj` — its input is act(gate_proj(x)) * up_proj(x): permute the rows of gate_proj and up_proj;
  * `self_attn.o_proj` — its input is the heads' attention outputs: permute v_proj's output rows *within each
    key/value head*, with one permutation per kv head shared by every query head of its GQA group, and
    o_proj's columns accordingly (heads never move; RoPE does not touch v).
Every other Linear reads the residual stream (q/k/v, gate/up): it keeps the plain N:M mask.

The search follows the reference: column importance = the column sum of the score ("sum"), or a lexicographic
key from an unstructured mask ("retained_degree_unstructured" / "retained_degree_per_outneuron"), sorted
ascending and dealt to the M slots of every N:M group in a snake order, so large-score channels spread across
groups. Unlike the reference, a permutation is kept only where it retains at least the identity's score.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import LLAMA_LIKE, attention_shape, get_family
from pruners.selection import row_mask, threshold_mask


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """selection.nm_mask without the Python loop over groups (the search evaluates many candidate orders)."""
    rows, cols = score.shape
    s = score.float().reshape(rows, cols // m, m)
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask.scatter_(2, torch.topk(s, n, dim=2, largest=False)[1], True)
    return mask.reshape(rows, cols)

IMPORTANCE = ("sum", "retained_degree_unstructured", "retained_degree_per_outneuron")
RESIDUAL_REASON = "input is the residual stream (no private producer to permute with it): plain N:M mask"


@dataclass(frozen=True)
class PermutationPlan:
    """How a consumer Linear's input columns may be permuted.

    Columns are viewed as [replicas, groups, positions]: `positions` are permuted, the same way in every
    replica (query heads of one kv group) of a group (kv head). MLP: 1 group, 1 replica, positions = neurons.
    """
    kind: str  # "mlp" | "attention"
    groups: int
    replicas: int
    positions: int
    producers: tuple[str, ...]  # full module names whose output rows follow the permutation


@dataclass
class ColumnPermutation:
    """The result of the search for one consumer Linear (set on PruneContext.permutation)."""
    plan: PermutationPlan
    index: torch.Tensor  # [in]: new column k holds old column index[k]
    producer_rows: torch.Tensor  # [producer out]: new row k of each producer is old row producer_rows[k]
    retained_identity: float
    retained: float
    groups_permuted: int
    search_s: float


def plan_for(model: nn.Module, name: str, ncols: int, m: int) -> PermutationPlan | str:
    """The plan of module `name` (full name), or why its columns cannot be permuted (residual-stream input).

    Unsupported families → PruneError (the option is only implemented where the producers are known).
    """
    fam = get_family(model)
    if fam.name not in LLAMA_LIKE:
        raise PruneError(f"RIA channel_permutation is implemented for Llama, Mistral and Qwen2 (SwiGLU, GQA), "
                         f"not {fam.name}: run without channel_permutation")
    prefix, _, local = name.rpartition(".")
    prefix, _, block = prefix.rpartition(".")
    local = f"{block}.{local}"
    if local == "mlp.down_proj":
        return PermutationPlan("mlp", 1, 1, ncols, (f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"))
    if local == "self_attn.o_proj":
        shape = attention_shape(model)
        if shape.heads * shape.head_dim != ncols:
            raise PruneError(f"{name}: {ncols} inputs do not match {shape.heads} heads × head_dim "
                             f"{shape.head_dim}: cannot permute channels")
        if shape.head_dim % m:
            return (f"head_dim {shape.head_dim} is not divisible by M={m} (groups would straddle heads): "
                    "plain N:M mask")
        return PermutationPlan("attention", shape.kv_heads, shape.group, shape.head_dim,
                               (f"{prefix}.self_attn.v_proj",))
    return RESIDUAL_REASON


def retained(score: torch.Tensor, mask: torch.Tensor) -> float:
    """Sum of the scores kept (mask 1 = pruned)."""
    return float(torch.where(mask, 0.0, score.float()).sum(dtype=torch.float64))


def lexsort(keys: list[torch.Tensor]) -> torch.Tensor:
    """Indices sorting by keys[-1], ties by keys[-2], … (stable), as the reference's lexsort."""
    idx = keys[0].argsort(stable=True)
    for k in keys[1:]:
        idx = idx.gather(0, k.gather(0, idx).argsort(stable=True))
    return idx


def column_order(score: torch.Tensor, importance: str, sparsity: float) -> torch.Tensor:
    """Columns of `score` [rows, cols] in ascending importance (the reference's `sorted_idx`)."""
    if importance == "sum":
        return torch.sort(score.sum(dim=0), stable=True)[1]
    if importance == "retained_degree_unstructured":
        mask = threshold_mask(score, sparsity)
    elif importance == "retained_degree_per_outneuron":
        mask = row_mask(score, sparsity)
    else:
        raise PruneError(f"importance {importance!r} must be one of {', '.join(IMPORTANCE)}")
    return lexsort([mask.sum(dim=0), (score * ~mask).sum(dim=0)])


def snake_index(order: torch.Tensor, m: int) -> torch.Tensor:
    """Deal columns sorted ascending to the M slots of each group: slot i gets the i-th 1/M of the order,
    reversed on every other slot, so each group holds one column from each importance band."""
    cols = order.numel()
    index = torch.empty_like(order)
    for i in range(m):
        band = order[cols * i // m: cols * (i + 1) // m]
        index[i::m] = band if i % 2 == 0 else band.flip(0)
    return index


def search(score: torch.Tensor, plan: PermutationPlan, n: int, m: int, importance: str) -> ColumnPermutation:
    """Heuristic channel reallocation under `plan`; a group keeps its permutation only if it retains more."""
    t0 = time.perf_counter()
    rows, cols = score.shape
    R, G, P = plan.replicas, plan.groups, plan.positions
    # attention columns are [query head, position] with heads [kv group, replica]
    s = score.reshape(rows, G, R, P)
    index = torch.arange(cols, device=score.device).reshape(G, R, P).clone()
    producer_rows = torch.arange(G * P, device=score.device).reshape(G, P).clone()
    base_total = new_total = 0.0
    permuted = 0
    for g in range(G):
        sg = s[:, g].reshape(rows, R * P)
        base = retained(sg, nm_mask(sg, n, m))
        # tied positions: the rows of every replica stacked, so a position's importance pools its replicas
        stacked = s[:, g].permute(1, 0, 2).reshape(R * rows, P)  # rows of every replica, positions as columns
        sigma = snake_index(column_order(stacked, importance, n / m), m)
        sp = s[:, g][:, :, sigma].reshape(rows, R * P)
        new = retained(sp, nm_mask(sp, n, m))
        base_total += base
        if new > base:
            permuted += 1
            new_total += new
            index[g] = index[g][:, sigma]
            producer_rows[g] = producer_rows[g][sigma]
        else:
            new_total += base
    return ColumnPermutation(plan, index.reshape(-1), producer_rows.reshape(-1), base_total, new_total,
                             permuted, time.perf_counter() - t0)


def permuted_nm_mask(score: torch.Tensor, perm: ColumnPermutation, n: int, m: int) -> torch.Tensor:
    """N:M mask chosen in permuted column order, returned in the module's current (unpermuted) order."""
    mask_p = nm_mask(score[:, perm.index], n, m)
    mask = torch.empty_like(mask_p)
    mask[:, perm.index] = mask_p
    return mask


def apply_layer_permutations(model: nn.Module, modules: dict[str, nn.Module],
                             perms: dict[str, ColumnPermutation | str],
                             masks: dict, weights: dict) -> dict:
    """Permute each consumer's input columns and its producers' output rows (weights, biases, masks) in place.

    `masks`/`weights` are the engine's result dicts keyed by parameter name; every touched parameter's new value
    goes into `weights` (biases included, so dense model + masks + weights rebuilds the pruned model).
    Returns {consumer module name: stats record}.
    """
    records = {}
    with torch.no_grad():
        for name, perm in perms.items():
            if isinstance(perm, str):  # not permutable: the reason goes to stats.json
                records[name] = {"applied": False, "reason": perm}
                continue
            if perm.groups_permuted == 0:
                records[name] = {"applied": False, "reason": "heuristic did not beat the identity order",
                                 "retained_score": perm.retained, "retained_score_identity": perm.retained_identity,
                                 "search_s": perm.search_s}
                continue
            consumer = modules[name]
            idx = perm.index.to(consumer.weight.device)
            consumer.weight.data.copy_(consumer.weight.data[:, idx])
            masks[name + ".weight"] = masks[name + ".weight"][:, perm.index.cpu()].contiguous()
            weights[name + ".weight"] = consumer.weight.data.detach().cpu().clone()
            rows = perm.producer_rows
            for pname in perm.plan.producers:
                prod = modules[pname]
                r = rows.to(prod.weight.device)
                prod.weight.data.copy_(prod.weight.data[r])
                masks[pname + ".weight"] = masks[pname + ".weight"][rows.cpu()].contiguous()
                weights[pname + ".weight"] = prod.weight.data.detach().cpu().clone()
                if getattr(prod, "bias", None) is not None:
                    prod.bias.data.copy_(prod.bias.data[r])
                    weights[pname + ".bias"] = prod.bias.data.detach().cpu().clone()
            records[name] = {
                "applied": True, "kind": perm.plan.kind, "producers_rows_permuted": list(perm.plan.producers),
                "groups_permuted": perm.groups_permuted, "groups": perm.plan.groups,
                "retained_score": perm.retained, "retained_score_identity": perm.retained_identity,
                "search_s": perm.search_s,
                "input_index": perm.index.tolist(), "producer_row_index": perm.producer_rows.tolist(),
            }
    return records
