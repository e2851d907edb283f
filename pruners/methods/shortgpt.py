"""ShortGPT: remove the decoder layers that change the hidden state least (Men et al. 2024; the authors' release
icip-cas/ShortGPT `ShortGPT.eval_importance` / `remove_layers`), computed as their code computes it.

Block influence of layer i: Σ over calibration tokens of 1 − cos(h_i, h_{i+1}), with h the hidden states the
model returns with `output_hidden_states=True` — h_0 the embeddings, h_i the output of layer i−1, and for the last
layer the *final-norm* hidden state (what transformers returns last, and what the reference compares with; this
moves stories260K's last layer in the ranking). Cosines come from the diagonal of the token × token product, a
zero-norm token counts 0.5, and the sums accumulate in Python floats, as the reference. Each calibration row is
cut into windows of `window` tokens (the reference's stride, 256), each window its own forward from position 0.

The layers with the lowest influence go (ties: lowest index first). `sparsity` is the fraction of decoder layers
removed: round(sparsity · L) layers, halves up — whole layers are coarse, so the nearest count is taken, and at
least one layer must stay. Masks: every prunable weight of a removed layer is masked (all ones) and its pruned
Linears' biases are zeroed (in `weights`), so the layer adds nothing to the residual stream and its output is
its input; `pruners.shrink` then drops it from a smaller stock model.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import decoder_layers, prunable_modules
from pruners.method import Method, ModelContext, PruneResult
from pruners.options import Option


def block_influence(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """1 − cos(x_t, y_t) per token of [tokens, hidden] inputs/outputs (the reference's matmul-diagonal form)."""
    x, y = x.float(), y.float()
    sim = torch.diagonal(x @ y.T) / (x.norm(dim=-1) * y.norm(dim=-1))
    return 1 - sim.nan_to_num(nan=0.5)


@torch.no_grad()
def layer_influence(model: nn.Module, calib_ids: torch.Tensor, window: int, device, report=None) -> list[float]:
    """Block influence sum of every decoder layer over all calibration tokens."""
    n_layers = len(decoder_layers(model))
    influence = [0.0] * n_layers
    for r in range(calib_ids.shape[0]):
        for start in range(0, calib_ids.shape[1], window):
            ids = calib_ids[r:r + 1, start:start + window].to(device)
            hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
            if len(hidden) != n_layers + 1:
                raise PruneError(f"the model returned {len(hidden)} hidden states for {n_layers} decoder layers: "
                                 "cannot measure block influence")
            for i in range(n_layers):
                influence[i] += block_influence(hidden[i][0], hidden[i + 1][0]).sum().item()
        if report is not None:
            report(0.9 * (r + 1) / calib_ids.shape[0], f"shortgpt: row {r + 1}/{calib_ids.shape[0]}")
    return influence


def layers_to_remove(sparsity: float, n_layers: int) -> int:
    n = math.floor(sparsity * n_layers + 0.5)
    if n >= n_layers:
        raise PruneError(f"sparsity {sparsity:g} would remove every decoder layer ({n} of {n_layers}): at most "
                         f"{n_layers - 1} can go (sparsity below {(n_layers - 0.5) / n_layers:.4g})", "sparsity")
    return n


def prune_model(model: nn.Module, calib_ids: torch.Tensor, ctx: ModelContext) -> PruneResult:
    n_layers = len(decoder_layers(model))
    n_remove = layers_to_remove(ctx.sparsity, n_layers)
    influence = layer_influence(model, calib_ids, ctx.options["window"], ctx.device, ctx.report)
    order = sorted(range(n_layers), key=influence.__getitem__)  # least influential first (stable)
    removed = sorted(order[:n_remove])
    masks, weights = {}, {}
    for i in range(n_layers):
        for name, module in prunable_modules(model, i).items():
            fill = torch.ones if i in removed else torch.zeros
            masks[name + ".weight"] = fill(module.weight.shape, dtype=torch.uint8)
            if i in removed and getattr(module, "bias", None) is not None:
                weights[name + ".bias"] = torch.zeros_like(module.bias, device="cpu")
        ctx.report(0.9 + 0.1 * (i + 1) / n_layers,
                   f"layer {i}: block influence {influence[i]:.4g}" + (" — removed" if i in removed else ""))
    structured = {"kind": "layers", "shrinkable": True, "block_influence": influence,
                  "order_least_influential_first": order, "removed_layers": removed,
                  "sparsity_means": "fraction of decoder layers removed: round(sparsity·L), halves up"}
    return PruneResult(masks, {"structured": structured,
                               "layer_sparsity": [1.0 if i in removed else 0.0 for i in range(n_layers)]},
                       weights or None)


METHOD = Method(
    "shortgpt", options=(
        Option("window", int, 256, min=1,
               help="tokens per forward when measuring block influence (each calibration row is cut into windows "
                    "of this many tokens, as the reference's stride 256)"),
    ), structured=True, prune_model=prune_model,
    help="removes the decoder layers with the lowest block influence (Men et al. 2024); sparsity = fraction of "
         "layers removed")
