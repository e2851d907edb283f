"""Pruning masks on a model: load them, check they fit, apply them in place.

Masks are `{parameter name: uint8 tensor of the parameter's shape}`, 1 = pruned (see pruners.io). A job prunes
its one model in place; nothing here copies a model.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from nsa.errors import NSAError
from pruners.apply import apply_result
from pruners.errors import PruneError


def load_masks(path) -> dict:
    """Masks from a `masks.safetensors` file (or a run folder containing one); an empty or unreadable file,
    or tensors that are not 0/1 masks, are refused (evaluating them would show the dense model as pruned)."""
    p = Path(path)
    if p.is_dir():
        p = p / "masks.safetensors"
    if not p.is_file():
        raise NSAError(f"mask file {p} does not exist: give a masks.safetensors written by `python -m nsa prune`")
    try:
        masks = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as err:
        raise NSAError(f"cannot read masks from {p} ({str(err)[:200]}): is it a masks.safetensors written by "
                       "`python -m nsa prune`?") from None
    if not masks:
        raise NSAError(f"mask file {p} holds no masks: evaluating it would be the dense model")
    bad = [n for n, m in masks.items() if m.dtype not in (torch.uint8, torch.bool) or (m.numel() and int(m.max()) > 1)]
    if bad:
        raise NSAError(f"mask file {p}: {bad[0]} is not a 0/1 mask (dtype {masks[bad[0]].dtype}); masks are uint8, "
                       "1 = pruned")
    return masks


def load_weights(path) -> dict | None:
    """SparseGPT's (or a permutation's) pruned weights from weights.safetensors, or None without a path."""
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise NSAError(f"weights file {p} does not exist")
    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError) as err:
        raise NSAError(f"cannot read weights from {p} ({str(err)[:200]})") from None


def check_masks(model, masks: dict) -> None:
    """Raise NSAError naming the first mismatches when mask names or shapes do not fit `model`."""
    params = dict(model.named_parameters())
    missing = [n for n in masks if n not in params]
    wrong = [f"{n} {tuple(masks[n].shape)} vs {tuple(params[n].shape)}"
             for n in masks if n in params and tuple(masks[n].shape) != tuple(params[n].shape)]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} mask(s) name no parameter of the model, e.g. {missing[:3]}")
        if wrong:
            parts.append(f"{len(wrong)} mask(s) have the wrong shape, e.g. {wrong[:3]}")
        raise NSAError("masks do not fit this model: " + "; ".join(parts)
                       + ". Use masks produced on the same model.")


def apply_masks(model, masks: dict, weights: dict | None = None):
    """Zero every masked entry in place; with `weights` (SparseGPT's pruned weights, FLAP's compensation
    biases), copy those in first — a `<Linear>.bias` for a Linear without a bias creates that bias."""
    check_masks(model, masks)
    try:
        return apply_result(model, masks, weights)
    except PruneError as err:
        raise NSAError(str(err)) from None


@contextlib.contextmanager
def masks_applied(model, masks: dict, weights: dict | None = None,
                  only: Callable[[str], bool] | None = None) -> Iterator[None]:
    """The pruned model for the duration of the block, the dense one again after it: the masks (and weights) of
    the parameters `only` accepts (all by default) are applied in place and every touched parameter is restored
    from a copy on exit (a bias the weights added is removed). For an app that keeps one dense model per process
    and shows pruned activations beside dense ones; the caller serialises concurrent use of the model."""
    check_masks(model, masks)
    keep = only or (lambda _name: True)
    masks = {n: m for n, m in masks.items() if keep(n)}
    weights = {n: w for n, w in (weights or {}).items() if keep(n)}
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in set(masks) | set(weights) if n in params}
    added = [n for n in weights if n not in params]
    try:
        apply_masks(model, masks, weights)
        yield
    finally:
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
        for name in added:
            setattr(model.get_submodule(name.rpartition(".")[0]), "bias", None)


def check_mask_files(masks: str | None, weights: str | None) -> None:
    """Command-line check before a model loads: the --masks/--weights files exist, and --weights comes with
    --masks (SparseGPT's updated weights only make sense with the masks they belong to)."""
    for name, path in (("--masks", masks), ("--weights", weights)):
        if path and not Path(path).is_file():
            raise NSAError(f"{name} file {path} does not exist")
    if weights and not masks:
        raise NSAError("--weights needs --masks")
