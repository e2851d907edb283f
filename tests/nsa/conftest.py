"""Fixtures of the NSA step tests: stories260K (real checkpoint) and a tiny random Llama sharing its tokenizer."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny(stories):
    """A random 2-layer Llama (64 MLP neurons per layer) with stories260K's 512-token vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval(), stories[1]
