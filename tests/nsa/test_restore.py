"""The restore experiment on real stories260K runs made by the job pipeline: putting every pruned MLP neuron back
gives the dense model's records exactly, leaving a restore gives the pruned ones exactly, the statistics are
those of the run's records, the result is cached, and bad input is refused in seconds with a sentence."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from nsa.errors import NSAError
from nsa.evaluation import run_evaluation
from nsa.jobs.pipeline import run_job
from nsa.jobs.spec import parse_spec
from nsa.masks import load_masks
from nsa.models import load_model
from nsa.restore import RestoreConfig, Restorer, plan_restore, restore_run, run_file
from nsa.validation import gold_margin, permutation_p
from tests.conftest import cpu_time


def spec_method(run_id: str) -> str:
    return json.loads(run_file(run_id, "spec.json").read_text())["prune"]["method"]


@pytest.fixture
def wanda_run(run_ids) -> str:
    return next(r for r in run_ids if spec_method(r) == "wanda")


@pytest.fixture(scope="module")
def light_cache(tmp_path_factory, stories_dir):
    """A cache with one run pruned at 1% by magnitude (many neurons keep every weight) and no NSA."""
    cache = tmp_path_factory.mktemp("restore-light")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSA_CACHE_DIR", str(cache))
        torch.set_num_threads(1)
        spec = parse_spec({"model": str(stories_dir), "prune": {"method": "magnitude", "sparsity": 0.01},
                           "evaluate": {"tasks": ["sst2"], "limit": 8}})
        run_job(spec)
    return cache, spec.id


@pytest.mark.parametrize("kwargs, field, text", [
    ({"neurons": ""}, "neurons", "an empty selection"),
    ({"neurons": " , "}, "neurons", "an empty selection"),
    ({"neurons": "1:2,x"}, "neurons", "'x' is not a neuron"),
    ({"neurons": "1:-2"}, "neurons", "not a neuron"),
    ({}, "cluster", "give either a cluster or a list of neurons"),
    ({"neurons": "1:2", "cluster": "negative"}, "neurons", "not both"),
    ({"neurons": "1:2", "draws": 19}, "draws", "at least 20"),
    ({"neurons": "1:2", "seed": -1}, "seed", "at least 0"),
    ({"cluster": " "}, "cluster", "empty cluster"),
])
def test_config_is_validated_once(kwargs, field, text):
    with pytest.raises(NSAError, match=text) as err:
        RestoreConfig(**kwargs)
    assert err.value.field == field
    assert RestoreConfig(neurons="2:5, 0:1,2:5").neurons == ((0, 1), (2, 5))


def test_all_pruned_neurons_back_is_dense_and_leaving_is_pruned(wanda_run):
    """With the run's MLP masks only, restoring every pruned neuron is the dense model (records equal, bit for
    bit); after the block the model is the pruned one again (its records equal the run's pruned records)."""
    plan = plan_restore(wanda_run, RestoreConfig(cluster="positive"))
    model, tokenizer = load_model(plan.spec.model)
    masks = load_masks(run_file(wanda_run, "masks.safetensors"))
    mlp = {name: m for name, m in masks.items() if ".mlp." in name}
    restorer = Restorer.prune(model, mlp)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    task = plan.spec.nsa.task
    every = [(layer, i) for layer, parts in restorer.parts.items() for i in range(parts[0][1].shape[0])
             if any(bool(restorer.masks[name].select(axis, i).any()) for name, _, axis in parts)]
    assert len(every) > 800
    with restorer.restored(every):
        _, records = run_evaluation(model, tokenizer, task, limit=plan.limit)
    assert records[task] == plan.dense_records
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # restoring nothing is left
    restorer.put([], dense=True)  # an empty set changes nothing
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    full = Restorer.prune(load_model(plan.spec.model)[0], masks)  # all the run's masks: the run's pruned model
    _, records = run_evaluation(full.model, tokenizer, task, limit=plan.limit)
    assert records[task] == plan.pruned_records


def test_cluster_restore_statistics_and_cache(wanda_run):
    config = RestoreConfig(cluster="positive")
    plan = plan_restore(wanda_run, config)
    assert plan.chosen and not plan.skipped  # 50% unstructured: every labelled neuron was pruned
    pruned_set = set(map(tuple, plan.chosen))
    for control in plan.controls:  # layer-matched, disjoint from the chosen set
        assert sorted(layer for layer, _ in control) == sorted(layer for layer, _ in plan.chosen)
        assert not set(control) & pruned_set
    assert len({tuple(c) for c in plan.controls}) == 20
    events = []
    result = restore_run(wanda_run, config, progress=events.append)
    assert events and events[-1].fraction == 1.0 and not result["cache"]["reused"]
    s = result["scopes"]["all"]
    assert s["n"] == result["n_examples"] == len(plan.dense_records) == 24 and result["draws"] == 20
    dense_acc = 100 * sum(r["correct"] for r in plan.dense_records) / 24
    pruned_acc = 100 * sum(r["correct"] for r in plan.pruned_records) / 24
    assert s["dense_accuracy"] == pytest.approx(dense_acc) and s["pruned_accuracy"] == pytest.approx(pruned_acc)
    margins = [gold_margin(r["loglik"], r["gold"]) for r in plan.pruned_records]
    assert s["pruned_margin"] == pytest.approx(sum(margins) / 24)
    assert s["p_accuracy"] == pytest.approx(permutation_p(s["recovered_points"], s["random_recovered_points"]))
    assert s["p_margin"] == pytest.approx(permutation_p(s["margin_recovered"], s["random_margin_recovered"]))
    assert len(s["random_recovered_points"]) == 20
    if s["lost_points"] <= 0:
        assert s["recovered_fraction"] is None and "nothing was lost" in s["verdict"]
    else:
        assert s["recovered_fraction"] == pytest.approx(s["recovered_points"] / s["lost_points"])
    assert "n = 24 examples, 20 draws" in result["verdict"]
    assert result["scopes"]["positive"]["n"] == sum(r["gold"] == 1 for r in plan.dense_records)
    started = cpu_time()
    again = restore_run(wanda_run, config)
    assert again["cache"]["reused"] and again["scopes"] == result["scopes"] and cpu_time() - started < 2


@pytest.mark.parametrize("kwargs, text", [
    ({"cluster": "neutral"}, "has no cluster 'neutral'; its clusters: negative, positive"),
    ({"neurons": "5:0"}, "outside the model (5 layers"),
    ({"neurons": "0:172"}, "outside the model"),
])
def test_bad_selection_on_an_nsa_run(wanda_run, kwargs, text):
    started = cpu_time()
    with pytest.raises(NSAError, match=text.replace("(", r"\(")):
        plan_restore(wanda_run, RestoreConfig(**kwargs))
    assert cpu_time() - started < 5


def test_unpruned_neurons_and_a_run_without_nsa(light_cache, monkeypatch):
    cache, run_id = light_cache
    monkeypatch.setenv("NSA_CACHE_DIR", str(cache))
    with pytest.raises(NSAError, match="has no NSA results.*--neurons") as err:
        plan_restore(run_id, RestoreConfig(cluster="negative"))
    assert err.value.field == "cluster"
    table = pd.read_parquet(run_file(run_id, "neurons.parquet"))
    kept = table[(table.frac_in == 0) & (table.frac_out == 0)]
    pruned = table[(table.frac_in > 0) | (table.frac_out > 0)]
    assert len(kept) and len(pruned)
    k, p = kept.iloc[0], pruned.iloc[0]
    named = f"{int(k.layer)}:{int(k['index'])}"
    with pytest.raises(NSAError, match=f"neuron\\(s\\) {named} were never pruned"):
        plan_restore(run_id, RestoreConfig(neurons=f"{named},{int(p.layer)}:{int(p['index'])}"))
    plan = plan_restore(run_id, RestoreConfig(neurons=f"{int(p.layer)}:{int(p['index'])}"))
    assert plan.task == "sst2" and plan.limit == 8  # no NSA: the run's one classification task
