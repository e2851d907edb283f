"""nsa.logit_lens on the real stories260K checkpoint and a fixture run's masks: the top tokens are the unembedding
of the norm-scaled output column, the pruned column is the masked one, neurons outside the model are refused."""
from __future__ import annotations

import pytest
import torch

from nsa.errors import NSAError
from nsa.logit_lens import _Vocab, all_top_tokens, check_neuron, top_tokens
from nsa.neuron_examples import run_inputs


def _expected(model, column: torch.Tensor, k: int) -> tuple[list[int], list[int]]:
    logits = model.lm_head.weight.float() @ (model.model.norm.weight.float() * column.float())
    return logits.topk(k).indices.tolist(), (-logits).topk(k).indices.tolist()


def _shown(tok, i: int) -> str:
    text = tok.decode([i])
    return tok.convert_ids_to_tokens(i) if "\ufffd" in text else text


def test_a_partial_character_token_is_shown_as_its_piece(stories):
    """Byte tokens decode to U+FFFD alone; the page shows the tokenizer's piece (<0xE2>) so they differ."""
    tok = stories[1]
    byte_ids = [i for i in range(tok.vocab_size) if "\ufffd" in tok.decode([i])][:3]
    assert len(byte_ids) == 3
    shown = _Vocab(tok)(byte_ids)
    assert len(set(shown)) == 3 and not any("\ufffd" in t for t in shown)
    assert shown == tok.convert_ids_to_tokens(byte_ids)


def test_dense_and_pruned_tokens(stories, run_ids):
    model, tok = stories
    masks = run_inputs(run_ids[0]).masks
    layer, index, k = 2, 7, 6
    lens = top_tokens(model, tok, layer, index, masks, k=k)
    down = model.model.layers[layer].mlp.down_proj.weight[:, index].detach()
    keep = ~masks[f"model.layers.{layer}.mlp.down_proj.weight"][:, index].bool()
    for part, column in (("dense", down), ("pruned", down * keep)):
        top, bottom = _expected(model, column, k)
        assert lens[part]["promoted"] == [_shown(tok, i) for i in top]
        assert lens[part]["suppressed"] == [_shown(tok, i) for i in bottom]
        assert lens[part]["promoted_logits"] == sorted(lens[part]["promoted_logits"], reverse=True)
    assert lens["kept_norm"] == pytest.approx(float((down * keep).norm() / down.norm()), rel=1e-5)
    every = all_top_tokens(model, tok, masks, k=k, block=50)
    assert len(every) == 5 * 172 and every[layer, index]["pruned"]["promoted"] == lens["pruned"]["promoted"]


@pytest.mark.parametrize("layer, index, message", [(5, 0, "layer 5 is outside the model: it has 5 decoder layers"),
                                                    (1, 172, "neuron 172 is outside layer 1: it has 172 MLP neurons"),
                                                    (-1, 0, "outside the model")])
def test_neuron_outside_the_model(stories, layer, index, message):
    with pytest.raises(NSAError, match=message):
        check_neuron(stories[0], layer, index)
