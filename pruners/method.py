"""The method contract: everything the engine needs to know about a pruning method, declared in one `Method`.

A method is a pure scoring/selection function over the Linears of one decoder layer, under the engine's
lifecycle (llm-compressor's modifiers are the model):

1. `prepare(model, calib_ids, options, device)` (optional) runs once on the dense model before any layer is
   touched and returns auxiliary tensors keyed by parameter name (GBLM: gradient norms);
2. per decoder layer, the engine collects the input statistics the method `needs` from one forward of the dense
   layer (Linears reading one tensor share one `InputStats`), then calls `prune` with `Target`s:
   one call per Linear, or — when `joint(options)` is true — one call per group of Linears sharing an input
   (SparseGPT sweeps q/k/v and gate/up together);
3. `prune` returns one `ModuleResult` per target: the mask (1 = pruned), new kept weights when the method
   changes them, and a column permutation to apply after the layer (RIA's channel reallocation).

A *structured* method (`structured=True`) removes whole units — MLP channels, attention heads, decoder layers —
and owns a whole-model driver instead: `prune_model(model, calib_ids, ModelContext)` returns a `PruneResult`
whose masks cover whole rows/columns (or whole layers) and whose `weights` hold the tensors it changed or adds
(FLAP's compensation biases). The engine dispatches on that declaration, applies the result to the model
(`pruners.apply.apply_result`, the same function `nsa.masks.apply_masks` uses) and completes the stats.
N:M patterns and sparsity profiles do not apply to structured methods (PruneConfig refuses them).

The engine reads nothing else from a method: no hidden attributes, no option names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from pruners.options import Option

NEEDS = ("activations", "hessian")  # input statistics a method can ask the engine to collect


@dataclass
class Target:
    """One Linear to prune: its full module name, its weight as [out, in] float32 (a copy the method may change
    in place) and the auxiliary tensor `prepare` produced for it (same [out, in] view), if any."""

    name: str
    weight: torch.Tensor
    aux: torch.Tensor | None = None


@dataclass
class LayerContext:
    """What a prune call knows besides its targets and their input statistics."""

    sparsity: float
    nm: tuple[int, int] | None
    options: dict
    model: nn.Module  # read-only: methods that need the model's structure (RIA's permutation plans) read it


@dataclass
class ModuleResult:
    """A method's answer for one target. `weight` ([out, in]) replaces the kept weights when given;
    `permutation` is a `pruners.permutation.ColumnPermutation` to apply after the layer, or a string saying
    why this module was not permuted (recorded in stats.json)."""

    mask: torch.Tensor  # bool [out, in], True = pruned
    weight: torch.Tensor | None = None
    permutation: Any = None


@dataclass
class ModelContext:
    """What a structured method's whole-model driver knows besides the model and the calibration rows.
    `report(fraction, message)` reports progress (at least once per decoder layer)."""

    sparsity: float
    options: dict
    device: torch.device
    calib_device: torch.device
    report: Callable[[float, str], None]


@dataclass
class PruneResult:
    masks: dict  # {param name: uint8 tensor, param shape, 1 = pruned}
    stats: dict
    weights: dict | None = None  # {param name: tensor}: kept weights the method changed (SparseGPT, RIA perm.),
    # or tensors it adds (FLAP's `<module>.bias`, created on a Linear without one when applied)


PruneFn = Callable[[list[Target], Any, LayerContext], list[ModuleResult]]
ModelPruneFn = Callable[[nn.Module, Any, ModelContext], PruneResult]


@dataclass(frozen=True)
class Method:
    name: str
    prune: PruneFn | None = None  # per-layer scoring (unstructured methods)
    options: tuple[Option, ...] = ()
    needs: tuple[str, ...] = ()  # subset of NEEDS; empty = no calibration data (magnitude)
    joint: Callable[[dict], bool] = field(default=lambda options: False)
    prepare: Callable[..., dict] | None = None  # (model, calib_ids, options, device) -> {param name: tensor}
    help: str = ""
    structured: bool = False  # masks remove whole rows/columns/layers: no N:M pattern, no sparsity profile
    prune_model: ModelPruneFn | None = None  # whole-model driver, instead of `prune` (structured methods)

    def __post_init__(self) -> None:
        if (self.prune is None) == (self.prune_model is None):
            raise TypeError(f"method {self.name}: give exactly one of prune (per layer) or prune_model (whole model)")

    @property
    def needs_calibration(self) -> bool:
        """Whether the method reads calibration data (a whole-model driver always does)."""
        return bool(self.needs) or self.prepare is not None or self.prune_model is not None


def per_module(fn: Callable[[Target, Any, LayerContext], ModuleResult]) -> PruneFn:
    """A `prune` function from one that handles a single Linear."""
    def prune(targets: list[Target], stats: Any, ctx: LayerContext) -> list[ModuleResult]:
        return [fn(t, stats, ctx) for t in targets]
    prune.__doc__ = fn.__doc__
    return prune


def group_options(default_group: str) -> tuple[Option, ...]:
    """Comparison-group options shared by every unstructured method (the reference's default differs)."""
    return (
        Option("group", str, default_group, choices=("row", "layer", "block"),
               help="which weights compete in unstructured mode: per output row, whole layer, or column block"),
        Option("block_size", int, 128, min=1, help="columns per block when group=block"),
    )
