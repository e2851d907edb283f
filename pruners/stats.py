"""Calibration statistics of one Linear input, accumulated sample by sample exactly as the references do."""
from __future__ import annotations

import math

import torch


class InputStats:
    """Running statistics of one input (shared by every Linear that reads the same tensor: q/k/v, gate/up).

    scaler_row[j] = (1/N) Σ_rows ‖x_j‖² (wanda's running mean); H = (2/N) Σ_rows XᵀX (sparsegpt).
    """

    def __init__(self, columns: int, device, hessian: bool, activations: bool):
        self.nsamples = 0
        self.scaler_row = torch.zeros(columns, device=device) if activations else None
        self.H = torch.zeros(columns, columns, device=device) if hessian else None

    def add_batch(self, inp: torch.Tensor) -> None:
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        x = inp.reshape(-1, inp.shape[-1]).t()  # [columns, tokens]
        old = self.nsamples
        self.nsamples += tmp
        if self.scaler_row is not None:
            self.scaler_row *= old / self.nsamples
            self.scaler_row += torch.norm(x.type(torch.float32), p=2, dim=1) ** 2 / self.nsamples
        if self.H is not None:
            self.H *= old / self.nsamples
            xs = math.sqrt(2 / self.nsamples) * x.float()
            self.H += xs.matmul(xs.t())
