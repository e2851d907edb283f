"""Apply a pruning result to a model in place: the one implementation behind the engine (after a structured
method) and `nsa.masks.apply_masks` (a dense model + a run's masks.safetensors / weights.safetensors)."""
from __future__ import annotations

import torch
from torch import nn

from pruners.errors import PruneError


def apply_result(model: nn.Module, masks: dict, weights: dict | None = None) -> nn.Module:
    """Copy `weights` in (a `<module>.bias` of a Linear that has no bias creates it), then zero every masked
    entry. Mask names and shapes are the caller's to check (they come from the same model)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, w in (weights or {}).items():
            if name not in params:
                params[name] = _new_bias(model, name, w)
            params[name].copy_(w.to(device=params[name].device, dtype=params[name].dtype))
        for name, m in masks.items():
            p = params[name]
            p.masked_fill_(m.to(device=p.device, dtype=torch.bool), 0)
    return model


def _new_bias(model: nn.Module, name: str, value: torch.Tensor) -> nn.Parameter:
    """The bias Parameter `name` (`<Linear>.bias`) created on a Linear built without one (FLAP compensation)."""
    module_name, _, leaf = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if leaf == "bias" else None
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear) or module.bias is not None or tuple(value.shape) != (module.out_features,):
        raise PruneError(f"weights name {name!r}, which is not a parameter of this model (only a missing bias of "
                         "a Linear, of its output size, can be added)")
    module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                           device=module.weight.device), requires_grad=module.weight.requires_grad)
    return module.bias
