"""Running a model layer by layer on the calibration rows: capture the inputs of decoder layer 0, run one layer on
every row (batch 1, as the references do) with hooks that feed per-input accumulators, and hand its outputs on.

Layer-0 inputs *and every keyword argument* the model passes its decoder layers (attention mask, position ids,
rotary position_embeddings, cache flags) are captured generically with a forward pre-hook (with kwargs) that
stops the forward; nothing is sized by max_position_embeddings.

The engine's progressive pass (each layer sees the outputs of the layers pruned before it) and the dense passes
of OWL's layer ratios and FLAP's fluctuation statistics (every layer sees the dense model's activations) are both
built from these pieces.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import nn

from pruners.errors import PruneError
from pruners.families import decoder_layers


class _Stop(Exception):
    pass


def validate_calibration(calib_ids, model) -> torch.Tensor:
    if not isinstance(calib_ids, torch.Tensor):
        raise PruneError("calibration must be a LongTensor [nsamples, seqlen] of token ids")
    if calib_ids.dtype != torch.int64:
        raise PruneError(f"calibration token ids have dtype {calib_ids.dtype}: they must be int64 token ids")
    if calib_ids.dim() != 2:
        raise PruneError(f"calibration tokens have shape {tuple(calib_ids.shape)}: need [nsamples, seqlen]")
    if calib_ids.shape[0] == 0 or calib_ids.shape[1] == 0:
        raise PruneError(f"calibration tokens are empty (shape {tuple(calib_ids.shape)}): need nsamples ≥ 1 and seqlen ≥ 1")
    vocab = getattr(model.config, "vocab_size", None)
    if vocab is not None and (int(calib_ids.min()) < 0 or int(calib_ids.max()) >= vocab):
        raise PruneError(f"calibration token ids span [{int(calib_ids.min())}, {int(calib_ids.max())}] "
                         f"but the model's vocabulary has {vocab} entries: tokenize with the model's tokenizer")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if context and calib_ids.shape[1] > context:
        raise PruneError(f"calibration rows have {calib_ids.shape[1]} tokens but the model reads at most {context}: "
                         f"use seqlen <= {context}", "seqlen")
    return calib_ids


def check_activation_memory(model: nn.Module, calib_ids: torch.Tensor, device: torch.device) -> None:
    """Refuse before allocating when the layer inputs and outputs of every calibration row (two buffers of
    nsamples x seqlen x hidden) cannot fit in the memory free on `device` (a request of 10^8 rows used to be
    killed by the kernel after growing to 17 GB)."""
    hidden = getattr(model.config, "hidden_size", None) or getattr(model.config, "n_embd", None)
    if not hidden:
        return
    dtype = next(model.parameters()).dtype
    need = 2 * calib_ids.shape[0] * calib_ids.shape[1] * int(hidden) * torch.finfo(dtype).bits // 8
    free = _free_bytes(torch.device(device))
    if free is not None and need > 0.8 * free:
        raise PruneError(f"the calibration activations need {need / 2**30:.1f} GiB ({calib_ids.shape[0]} rows x "
                         f"{calib_ids.shape[1]} tokens x {hidden} x 2 buffers) but {free / 2**30:.1f} GiB are free "
                         f"on {device}: lower nsamples or seqlen", "nsamples")


def _free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            info = dict(line.split(":", 1) for line in fh)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _layer_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def capture_layer0_inputs(model: nn.Module, calib_ids: torch.Tensor, device, calib_device):
    """Run the model on each calibration row until layer 0; return (inputs [n, seq, hidden], layer kwargs)."""
    layers = decoder_layers(model)
    captured: dict = {}

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("hidden_states")
        captured["hidden"] = hidden
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _Stop

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    inps, kwargs = None, None
    try:
        for i in range(calib_ids.shape[0]):
            try:
                model(input_ids=calib_ids[i:i + 1].to(device), use_cache=False)
            except _Stop:
                pass
            h = captured["hidden"]
            if inps is None:
                inps = torch.zeros((calib_ids.shape[0],) + tuple(h.shape[1:]), dtype=h.dtype, device=calib_device)
                kwargs = captured["kwargs"]
            inps[i] = h[0].to(calib_device)
    finally:
        handle.remove()
    return inps, kwargs


def _to(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    return obj


def weight_view(module: nn.Module, conv1d: bool) -> torch.Tensor:
    """Weight as [out, in] float32, a copy (GPT-2 Conv1D stores [in, out])."""
    w = module.weight.data
    return (w.t() if conv1d else w).float().clone()


class LayerInputs:
    """The calibration activations entering the current decoder layer (`inps`), a buffer for its outputs, and
    the keyword arguments every layer receives. `run` feeds every row through a layer; `advance` makes the
    outputs the next layer's inputs."""

    def __init__(self, model: nn.Module, calib_ids: torch.Tensor, device, calib_device):
        self.device = device
        check_activation_memory(model, calib_ids, calib_device)
        self.inps, kwargs = capture_layer0_inputs(model, calib_ids, device, calib_device)
        self.kwargs = {k: _to(v, device) for k, v in kwargs.items()}
        self.outs = torch.zeros_like(self.inps)

    @torch.no_grad()
    def run(self, layer: nn.Module, after_row: Callable[[], None] | None = None) -> None:
        """Every row through `layer` (batch 1), outputs into the buffer; `after_row()` follows each row."""
        for j in range(self.inps.shape[0]):
            out = layer(self.inps[j:j + 1].to(self.device), **self.kwargs)
            self.outs[j] = _layer_output(out)[0].to(self.outs.device)
            if after_row is not None:
                after_row()

    def advance(self) -> None:
        self.inps, self.outs = self.outs, self.inps


def collect_inputs(inputs: LayerInputs, layer: nn.Module, modules: dict[str, nn.Module],
                   make: Callable[[torch.Tensor], object]) -> dict:
    """One forward of `layer` per row; the input of each module in `modules` is fed to an accumulator
    (`make(x)` builds one from the first input seen; it has `add_batch(x)`). Modules reading the same tensor
    (q/k/v, gate/up) share one accumulator, fed once per row. Returns {module name: accumulator}; the layer's
    outputs are in `inputs.outs`."""
    seen: dict[str, torch.Tensor] = {}
    handles = [mod.register_forward_hook(
        lambda m, inp, out, name=name: seen.__setitem__(name, inp[0].detach())) for name, mod in modules.items()]
    shared: dict[tuple, object] = {}
    owner: dict[str, tuple] = {}

    def accumulate() -> None:
        done = set()
        for name, x in seen.items():
            key = owner.get(name) or (x.data_ptr(), tuple(x.shape))
            owner[name] = key
            if key not in shared:
                shared[key] = make(x)
            if key not in done:
                shared[key].add_batch(x)
                done.add(key)
        seen.clear()

    try:
        inputs.run(layer, after_row=accumulate)
    finally:
        for h in handles:
            h.remove()
    return {name: shared[owner[name]] for name in modules}


def dense_layer_pass(model: nn.Module, calib_ids: torch.Tensor, device, calib_device,
                     modules_of: Callable[[int], dict[str, nn.Module]], make: Callable[[torch.Tensor], object],
                     ) -> Iterator[tuple[int, dict]]:
    """For each decoder layer of the *dense* model, in order: (layer index, {module name: accumulator}) from
    one forward of every row; the dense outputs become the next layer's inputs (nothing is changed)."""
    inputs = LayerInputs(model, calib_ids, device, calib_device)
    for i, layer in enumerate(decoder_layers(model)):
        yield i, collect_inputs(inputs, layer, modules_of(i), make)
        inputs.advance()
