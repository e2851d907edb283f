"""GBLM-Pruner: |W|·sqrt(scaler_row) + |W|·G with G the per-weight gradient l2 norm (fp16), per row.

The gradients come from `prepare`: one full backward per calibration row on the dense model, before any
layer is pruned (VILA-Lab/GBLM-Pruner gradient_computation.py).
"""
import torch

from pruners.gradients import compute_gradients
from pruners.method import (
    LayerContext,
    Method,
    ModuleResult,
    Target,
    group_options,
    per_module,
)
from pruners.methods.wanda import wanda_score
from pruners.options import Option
from pruners.selection import select


def prepare(model, calib_ids: torch.Tensor, options: dict, device) -> dict:
    return compute_gradients(model, calib_ids, scale=options["scale"], device=device)


def prune_module(target: Target, stats, ctx: LayerContext) -> ModuleResult:
    W = target.weight
    score = wanda_score(W, stats) + torch.abs(W) * target.aux.to(W.device).float()
    return ModuleResult(select(score, ctx.sparsity, ctx.nm, ctx.options["group"], ctx.options["block_size"]))


METHOD = Method(
    "gblm", per_module(prune_module),
    group_options("row") + (Option("scale", float, 100.0, min=1e-6, max=1e6, help="gradient scale before squaring"),),
    needs=("activations",), prepare=prepare, help="gradient + activation scores (Das et al. 2023)")
