"""Perplexity as Wanda/SparseGPT's eval_ppl computes it, checked against a one-window-at-a-time loop."""
from __future__ import annotations

import math

import pytest
import torch

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.perplexity import eval_tokens, perplexity


def _reference_ppl(model, ids, seqlen, nsamples):
    """The reference loop with bs=1: loss * seqlen summed, divided by nsamples * seqlen."""
    loss_fct = torch.nn.CrossEntropyLoss()
    nlls = []
    with torch.no_grad():
        for i in range(nsamples):
            inputs = ids[:, i * seqlen:(i + 1) * seqlen]
            logits = model(inputs).logits
            loss = loss_fct(logits[:, :-1, :].reshape(-1, logits.size(-1)), inputs[:, 1:].reshape(-1))
            nlls.append(loss.float() * seqlen)
    return torch.exp(torch.stack(nlls).sum() / (nsamples * seqlen)).item()


@pytest.mark.parametrize("dataset", ["wikitext2", "c4"])
def test_batched_windows_match_one_window_at_a_time(stories, dataset):
    model, tok = stories
    result = perplexity(model, tok, dataset, seqlen=128, batch_size=4, max_windows=6)
    texts = [r["text"] for r in D.load_examples(dataset)]
    ids = eval_tokens(dataset, tok, 128)
    # the stream's start is the reference join's start (wikitext2: "\n\n" join; c4: " " join of the docs)
    head = "\n\n".join(texts[:40]) if dataset == "wikitext2" else " ".join(texts[:40])
    assert ids[0, :6 * 128].tolist() == tok(head).input_ids[:6 * 128]
    if dataset == "c4":
        assert ids.shape[1] == 256 * 128  # SparseGPT's c4 eval set: the first 256 * seqlen tokens
    assert result["n_windows"] == 6 and result["n_tokens"] == 6 * 128
    assert result["ppl"] == pytest.approx(_reference_ppl(model, ids, 128, 6), rel=1e-4)
    assert result["ppl"] == pytest.approx(math.exp(sum(result["window_nll"]) / 6), rel=1e-9)


def test_defaults_to_the_model_context_and_all_windows(stories):
    model, tok = stories
    result = perplexity(model, tok, "wikitext2", max_windows=2)
    assert result["seqlen"] == 512
    full = len(tok("\n\n".join(r["text"] for r in D.load_examples("wikitext2"))).input_ids) // 512
    assert full > 100 and result["n_windows"] == 2


def test_bad_input(stories):
    model, tok = stories
    with pytest.raises(NSAError, match="not 'sst2'"):
        perplexity(model, tok, "sst2")
    with pytest.raises(NSAError, match="limit must be a positive integer"):
        perplexity(model, tok, "wikitext2", max_windows=0)
    with pytest.raises(NSAError, match="fewer than one window"):
        perplexity(model, tok, "wikitext2", seqlen=10 ** 8)
