"""nsa.neuron_examples: dense activations are the unmodified model's, pruned ones those of a copy with the masks
applied, the shared model is dense again afterwards, and the result is a cached `neuron-examples` entry."""
from __future__ import annotations

import copy

import numpy as np
import torch

from nsa import neuron_examples as NE
from nsa.masks import apply_masks


def _direct(model, layer, index, encoded):
    out = []
    for e in encoded:
        got = {}
        h = model.model.layers[layer].mlp.down_proj.register_forward_pre_hook(
            lambda _m, args: got.__setitem__("a", args[0][0, :, index].detach()))
        with torch.no_grad():
            model(torch.tensor([e.ids]))
        h.remove()
        out.append(got["a"][e.text_positions].numpy())
    return out


def test_examples_dense_and_pruned(stories, run_ids):
    model, tok = stories
    run = NE.run_inputs(run_ids[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    settings = NE.ExampleSettings(n_task=10, n_general=6, general_tokens=32)
    data = NE.examples(model, tok, run, 3, 11, settings)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())  # dense again
    task = NE.task_texts(run.spec, tok, model, 10)
    general = NE.general_texts(run.spec, tok, 6, 32)
    texts = task + general
    pruned_model = apply_masks(copy.deepcopy(model), run.masks, run.weights)
    dense, pruned = _direct(model, 3, 11, texts), _direct(pruned_model, 3, 11, texts)
    src = data["sources"]
    assert src["task"]["n"] == 10 and src["general"]["n"] == 6 and src["general"]["name"] == "wikitext2"
    np.testing.assert_allclose(src["task"]["max_dense"], [d.max() for d in dense[:10]], atol=1e-4)
    np.testing.assert_allclose(src["general"]["max_pruned"], [p.max() for p in pruned[10:]], atol=1e-4)
    best = src["task"]["top_dense"][0]
    i = int(np.argmax([d.max() for d in dense[:10]]))
    np.testing.assert_allclose(best["pruned"], pruned[i], atol=1e-3)
    assert len(best["tokens"]) == len(task[i].text_positions) == len(best["dense"])
    assert sum(data["histogram"]["dense"]) == sum(len(d) for d in dense) == data["histogram"]["n_tokens"]
    assert NE.stored(run.run_id, 3, 11, settings) == data
