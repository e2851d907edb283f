"""Fixtures of the nsa tests: a tiny random Llama sharing stories260K's tokenizer (the real checkpoint itself
comes from tests/conftest.py)."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


def tiny_llama(positions: int = 256) -> LlamaForCausalLM:
    """A random 2-layer Llama (64 MLP neurons per layer) with stories260K's 512-token vocabulary, seeded."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=positions)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="session")
def tiny(stories):
    return tiny_llama(), stories[1]
