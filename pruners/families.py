"""Model families the engine supports: where the decoder layers are, which weights to prune, the MLP sites.

One `Family` entry per architecture in `FAMILIES` (a registry, not an if/elif chain). Embeddings, norms
and lm_head are never pruned.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from torch import nn

from pruners.errors import PruneError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    layers_path: str  # attribute path from the CausalLM to the ModuleList of decoder layers
    prunable: tuple[str, ...]  # module names inside one decoder layer that are pruned
    mlp_in: tuple[str, ...]  # modules whose output rows are the MLP neurons
    mlp_out: str  # module whose input columns are the MLP neurons
    conv1d: bool = False  # GPT-2 Conv1D: weight stored [in, out]


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family("llama", ("llama",), "model.layers",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
               ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
        Family("mistral", ("mistral",), "model.layers",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
               ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
        Family("qwen2", ("qwen2",), "model.layers",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
               ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
        Family("opt", ("opt",), "model.decoder.layers",
               ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "fc1", "fc2"),
               ("fc1",), "fc2"),
        Family("gpt2", ("gpt2",), "transformer.h",
               ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
               ("mlp.c_fc",), "mlp.c_proj", conv1d=True),
        Family("gpt_neox", ("gpt_neox",), "gpt_neox.layers",
               ("attention.query_key_value", "attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),
               ("mlp.dense_h_to_4h",), "mlp.dense_4h_to_h"),
    ]
}
SUPPORTED = "Llama, Mistral, Qwen2, OPT, GPT-2, GPT-NeoX"
# separate q/k/v/o projections (grouped-query attention) and a gated MLP (gate/up → down): where heads and MLP
# channels can be removed or permuted as whole units
LLAMA_LIKE = ("llama", "mistral", "qwen2")
ATTENTION = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")


@dataclass(frozen=True)
class AttentionShape:
    """Query heads, key/value heads and head size of a (grouped-query) attention; query heads
    g·group … (g+1)·group − 1 share key/value head g (transformers' repeat_kv)."""

    heads: int
    kv_heads: int
    head_dim: int

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads


def attention_shape(model: nn.Module) -> AttentionShape:
    """The model's attention shape from its config; heads not divisible into key/value groups → PruneError."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    if kv <= 0 or heads % kv:
        raise PruneError(f"the model has {heads} attention heads and {kv} key/value heads: {heads} is not "
                         f"divisible by {kv}, so the query heads do not form grouped-query groups")
    return AttentionShape(heads, kv, head_dim)


@dataclass
class MLPSite:
    """One decoder layer's MLP: the weights producing its neurons and the weight consuming them.

    A forward-pre-hook on `out_module` sees the neuron activations `[batch, seq, n_neurons]`; OPT flattens the
    tokens before fc2, so there it sees `[batch*seq, n_neurons]` (use `x.reshape(-1, x.shape[-1])`).
    """
    layer: int
    in_params: list[str]
    out_param: str
    out_module: nn.Module | None = field(default=None, repr=False)
    conv1d: bool = False


def get_family(model: nn.Module) -> Family:
    """The family entry of `model` (by `config.model_type`); unsupported → PruneError listing supported ones."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    raise PruneError(f"unsupported architecture {model_type!r}: supported families are {SUPPORTED}")


def _get(root: nn.Module, path: str):
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ModuleList of decoder layers; a model without any → PruneError."""
    fam = get_family(model)
    layers = _get(model, fam.layers_path)
    if layers is None or len(layers) == 0:
        raise PruneError(f"model ({fam.name}) has no decoder layers at '{fam.layers_path}': nothing to prune")
    return layers


def prunable_modules(model: nn.Module, layer_index: int) -> dict[str, nn.Module]:
    """{full module name: module} of the weights pruned in decoder layer `layer_index`."""
    fam = get_family(model)
    layer = decoder_layers(model)[layer_index]
    out = {}
    for name in fam.prunable:
        mod = _get(layer, name)
        if mod is not None:
            out[f"{fam.layers_path}.{layer_index}.{name}"] = mod
    return out


def mlp_sites(model: nn.Module) -> list[MLPSite]:
    """One MLPSite per decoder layer (parameter names as in `model.named_parameters()`)."""
    fam = get_family(model)
    sites = []
    for i, layer in enumerate(decoder_layers(model)):
        prefix = f"{fam.layers_path}.{i}."
        sites.append(MLPSite(layer=i, in_params=[prefix + m + ".weight" for m in fam.mlp_in],
                             out_param=prefix + fam.mlp_out + ".weight",
                             out_module=_get(layer, fam.mlp_out), conv1d=fam.conv1d))
    return sites


def mlp_sites_from_names(param_names) -> list[MLPSite]:
    """MLP sites from parameter names alone (e.g. mask keys); out_module is None. Unknown → PruneError."""
    names = set(param_names)
    for fam in FAMILIES.values():
        pattern = re.compile(rf"^{re.escape(fam.layers_path)}\.(\d+)\.{re.escape(fam.mlp_out)}\.weight$")
        layers = sorted(int(m.group(1)) for n in names if (m := pattern.match(n)))
        if not layers:
            continue
        sites = []
        for i in layers:
            prefix = f"{fam.layers_path}.{i}."
            ins = [prefix + m + ".weight" for m in fam.mlp_in if prefix + m + ".weight" in names]
            sites.append(MLPSite(layer=i, in_params=ins, out_param=prefix + fam.mlp_out + ".weight",
                                 conv1d=fam.conv1d))
        return sites
    raise PruneError(f"no MLP weights of a supported family ({SUPPORTED}) among the given parameter names")
