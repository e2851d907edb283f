"""GBLM's gradient pass on the dense model: per sample, full backward of the LM loss; G = sqrt(Σ(scale·g)²) in fp16."""
from __future__ import annotations

import torch

from pruners.families import decoder_layers, prunable_modules


def compute_gradients(model, calib_ids: torch.Tensor, scale: float = 100.0, device=None) -> dict:
    """{param name: float16 G} for every pruned weight (summed over samples, not averaged, as the reference)."""
    names = {n + ".weight" for i in range(len(decoder_layers(model))) for n in prunable_modules(model, i)}
    params = {n: p for n, p in model.named_parameters() if n in names}
    req = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in params)
    l2 = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    try:
        for k in range(calib_ids.shape[0]):
            x = calib_ids[k:k + 1].to(device)
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=x, labels=x, use_cache=False).loss
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    l2[n] += (p.grad.float() * scale) ** 2
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(req[n])
    return {n: torch.sqrt(v).to(torch.float16) for n, v in l2.items()}
