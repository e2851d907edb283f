"""A structured run through the job pipeline: FLAP removes whole MLP channels, the neuron table marks exactly
those neurons `removed`, and NSA reports which labelled neurons were removed (per neuron and per cluster)."""
from __future__ import annotations

import json

import pandas as pd
from safetensors.torch import load_file

from nsa.jobs.pipeline import run_job


def test_flap_run_marks_removed_neurons_and_nsa_counts_the_labelled_ones(stories_dir):
    spec = {"model": str(stories_dir), "prune": {"method": "flap", "sparsity": 0.3},
            "calibration": {"source": "wikitext2", "nsamples": 4, "seqlen": 64, "seed": 0},
            "evaluate": {"tasks": ["sst2"], "limit": 24},
            "nsa": {"task": "sst2", "options": {"validation": False, "label_at_chance": True, "min_df": 2}}}
    folder = run_job(spec)
    neurons = pd.read_parquet(folder / "neurons.parquet")
    masks = load_file(str(folder / "masks.safetensors"))
    for layer, part in neurons.groupby("layer"):
        down = masks[f"model.layers.{layer}.mlp.down_proj.weight"]
        whole_columns = set((down.sum(dim=0) == down.shape[0]).nonzero().flatten().tolist())
        assert set(part.loc[part["removed"], "index"]) == whole_columns
    assert 0 < neurons["removed"].sum() < len(neurons)
    assert set(neurons.loc[~neurons["removed"], "frac_in"]) == {0.0}  # FLAP prunes channels whole or not at all

    shift = pd.read_json(folder / "nsa" / "neuron_shift.jsonl", lines=True)
    assert len(shift) > 0
    joined = shift.merge(neurons[["layer", "index", "removed"]], on=["layer", "index"], suffixes=("", "_table"))
    assert (joined["removed"] == joined["removed_table"]).all()
    summary = json.loads((folder / "nsa" / "summary.json").read_text())["pruned_neurons"]
    assert summary["labelled_removed"] == int(shift["removed"].sum()) > 0
    assert sum(summary["labelled_removed_per_cluster"].values()) == summary["labelled_removed"]
