"""Tiny models of every supported family, built from configs (random weights, seeded)."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from pruners import PruneConfig, prune
from pruners.shrink import shrink
from tests.conftest import SHARED

REFERENCE = Path(__file__).resolve().parent / "reference"  # outputs of the authors' code (see its README)


def tiny_model(family: str):
    import transformers as tf
    torch.manual_seed(0)
    common = dict(vocab_size=128)
    if family == "llama":
        cfg = tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=64, **common)
        model = tf.LlamaForCausalLM(cfg)
    elif family == "mistral":
        cfg = tf.MistralConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, max_position_embeddings=64, sliding_window=16, **common)
        model = tf.MistralForCausalLM(cfg)
    elif family == "qwen2":
        cfg = tf.Qwen2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=1, max_position_embeddings=64, **common)
        model = tf.Qwen2ForCausalLM(cfg)
    elif family == "opt":
        cfg = tf.OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           word_embed_proj_dim=32, max_position_embeddings=64, **common)
        model = tf.OPTForCausalLM(cfg)
    elif family == "gpt2":
        cfg = tf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
        model = tf.GPT2LMHeadModel(cfg)
    elif family == "gpt_neox":
        cfg = tf.GPTNeoXConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=64, **common)
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        raise KeyError(family)
    return model.eval()


FAMILY_NAMES = ["llama", "mistral", "qwen2", "opt", "gpt2", "gpt_neox"]


@pytest.fixture
def calib_ids():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 128, (4, 16), generator=g)


def assert_saved_smaller(pruned, masks, tmp_path, ids, smaller: bool = True):
    """Shrink the pruned model, save it, load it back with plain AutoModelForCausalLM: same logits (fp32, 1e-5),
    and (`smaller`) fewer parameters and a smaller file. Returns (loaded model, shrink summary)."""
    small, summary = shrink(pruned, masks)
    pruned.save_pretrained(tmp_path / "full")
    small.save_pretrained(tmp_path / "small")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "small", dtype=torch.float32).eval()
    assert type(loaded) is type(pruned)
    with torch.no_grad():
        expected, got = pruned(ids).logits, loaded(ids).logits
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), float((got - expected).abs().max())
    assert sum(p.numel() for p in loaded.parameters()) == summary["params_after"]
    if smaller:
        assert summary["params_after"] < summary["params_before"]
        size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
        assert size(tmp_path / "small") < size(tmp_path / "full")
    return loaded, summary


@functools.lru_cache(maxsize=1)
def reference_arithmetic() -> bool:
    """Does this CPU round float sums as the machine that recorded the reference outputs did?

    The authors' code was run once, on one CPU (README in reference/); parity is bit for bit only where the
    matrix kernels add in the same order. Another microarchitecture (e.g. an AVX-512 Xeon) moves the last bits of
    every matmul, so hashes of masks that depend on float scores cannot match there. The fingerprint is the
    recorded float64 ShortGPT block influence of stories260K on the shared calibration rows: a forward pass and
    cosine sums, nothing method-specific (its discrete outcome is checked everywhere)."""
    ref = json.loads((REFERENCE / "shortgpt" / "stories260K" / "shortgpt.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(SHARED / "models" / "stories260K", dtype=torch.float32).eval()
    ids = load_file(str(REFERENCE / "stories260K-c4-calib.safetensors"))["input_ids"]
    info = prune(model, ids, PruneConfig("shortgpt", 0.4)).stats["structured"]
    return [x.hex() for x in info["block_influence"]] == ref["block_influence_sum_float64_hex"]


OTHER_ARITHMETIC = ("this CPU rounds float sums differently from the machine that recorded the references (the "
                    "ShortGPT block-influence fingerprint differs in its last bits), so bit-for-bit comparison "
                    "is only possible there; the discrete outcomes are still compared exactly")
