"""Neuron sites: capture reads the down projection's input, ablation zeros it, fractions follow the masks."""
from __future__ import annotations

import copy

import pytest
import torch

from nsa.errors import NSAError
from nsa.neurons import ablate, capture, layer_sizes, neuron_sites, pruned_fractions, tokens_of_words


def test_capture_sees_act_gate_times_up(tiny):
    model, _ = tiny
    sites = neuron_sites(model)
    assert len(sites) == 2 and layer_sizes(sites) == [64, 64]
    mlp_in, seen = {}, {}
    handles = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_in.__setitem__(i, a[0]))
               for i, layer in enumerate(model.model.layers)]
    ids = torch.randint(0, 512, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), capture(sites, lambda layer, acts: seen.__setitem__(layer, acts.clone())):
        logits = model(ids).logits
    for h in handles:
        h.remove()
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        expected = mlp.act_fn(mlp.gate_proj(mlp_in[i])) * mlp.up_proj(mlp_in[i])
        torch.testing.assert_close(seen[i], expected)
    torch.testing.assert_close(model(ids).logits, logits)  # hooks are gone and changed nothing


def test_ablate_equals_zeroing_down_projection_columns(tiny):
    model, _ = tiny
    sites = neuron_sites(model)
    ids = torch.randint(0, 512, (1, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), ablate(sites, {0: [1, 5], 1: [63]}):
        ablated = model(ids).logits
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.model.layers[0].mlp.down_proj.weight[:, [1, 5]] = 0
        ref.model.layers[1].mlp.down_proj.weight[:, 63] = 0
        torch.testing.assert_close(ablated, ref(ids).logits)
        assert not torch.allclose(ablated, model(ids).logits)


def test_pruned_fractions_rows_and_columns(tiny):
    model, _ = tiny
    g = torch.Generator().manual_seed(2)
    masks = {n: (torch.rand(p.shape, generator=g) < 0.3 + 0.4 * (i % 2)).to(torch.uint8)
             for i, (n, p) in enumerate(model.named_parameters()) if p.dim() == 2 and "embed" not in n
             and "lm_head" not in n}
    rows = pruned_fractions(masks)
    assert len(rows) == 128 and [(r["layer"], r["index"]) for r in rows[:2]] == [(0, 0), (0, 1)]
    gate, up = masks["model.layers.1.mlp.gate_proj.weight"].float(), masks["model.layers.1.mlp.up_proj.weight"].float()
    down = masks["model.layers.1.mlp.down_proj.weight"].float()
    r = rows[64 + 7]
    assert r["frac_in"] == pytest.approx(float((gate[7].mean() + up[7].mean()) / 2))
    assert r["frac_out"] == pytest.approx(float(down[:, 7].mean()))


def test_gpt2_conv1d_sites_and_fractions():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2)).eval()
    sites = neuron_sites(model)
    assert layer_sizes(sites) == [64, 64]
    mlp_in, seen = {}, {}
    h = model.transformer.h[0].mlp.register_forward_pre_hook(lambda m, a: mlp_in.__setitem__(0, a[0]))
    with torch.no_grad(), capture(sites, lambda layer, acts: seen.__setitem__(layer, acts)):
        model(torch.arange(6)[None])
    h.remove()
    mlp = model.transformer.h[0].mlp
    torch.testing.assert_close(seen[0], mlp.act(mlp.c_fc(mlp_in[0])))
    g = torch.Generator().manual_seed(3)
    masks = {n: (torch.rand(p.shape, generator=g) < 0.5).to(torch.uint8) for n, p in model.named_parameters()
             if n.endswith(("c_fc.weight", "c_proj.weight"))}
    rows = pruned_fractions(masks)
    fc, proj = masks["transformer.h.0.mlp.c_fc.weight"].float(), masks["transformer.h.0.mlp.c_proj.weight"].float()
    assert fc.shape == (16, 64)  # Conv1D stores [in, out]: a neuron is a column of c_fc, a row of c_proj
    assert rows[3]["frac_in"] == pytest.approx(float(fc[:, 3].mean()))
    assert rows[3]["frac_out"] == pytest.approx(float(proj[3].mean()))


def test_model_without_mlp_intermediate_is_refused():
    from transformers import BertConfig, BertForMaskedLM

    model = BertForMaskedLM(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    with pytest.raises(NSAError, match="no MLP intermediate found"):
        neuron_sites(model)


def test_tokens_of_words_uses_offsets():
    # " awful" (leading space) belongs to "awful"; special tokens (0, 0) never match
    offsets = [(0, 0), (0, 3), (3, 4), (4, 10), (10, 12)]
    spans = [("the", 0, 3), ("awful", 5, 10), ("x", 11, 12)]
    assert tokens_of_words(offsets, spans) == [[1], [3], [4]]


def test_a_neuron_is_removed_only_when_all_its_weights_are(tiny):
    """`removed`: the neuron's whole gate and up rows, or its whole down column, masked (it then computes
    nothing); one kept weight on each side keeps it."""
    model, _ = tiny
    masks = {n: torch.zeros(p.shape, dtype=torch.uint8) for n, p in model.named_parameters()
             if p.dim() == 2 and ".mlp." in n}
    gate, up = masks["model.layers.0.mlp.gate_proj.weight"], masks["model.layers.0.mlp.up_proj.weight"]
    down = masks["model.layers.0.mlp.down_proj.weight"]
    gate[[3, 5]] = 1
    up[[3, 5]] = 1                # neuron 3: whole input rows
    down[:, [5, 7]] = 1           # neuron 7: whole output column
    gate[5, 0] = down[0, 5] = 0   # neuron 5 keeps one input weight and one output weight
    rows = {(r["layer"], r["index"]): r for r in pruned_fractions(masks)}
    assert rows[(0, 3)]["removed"] and rows[(0, 3)]["frac_in"] == 1.0 and rows[(0, 3)]["frac_out"] == 0.0
    assert rows[(0, 7)]["removed"] and rows[(0, 7)]["frac_out"] == 1.0
    assert not rows[(0, 5)]["removed"] and 0.9 < rows[(0, 5)]["frac_in"] < 1 and 0.9 < rows[(0, 5)]["frac_out"] < 1
    assert sum(r["removed"] for r in rows.values()) == 2
