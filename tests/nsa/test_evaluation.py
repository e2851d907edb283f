"""Evaluation through lm-evaluation-harness on a tiny random Llama and on stories260K (real data, small limits).

The harness runs are shared by the tests of this module (module fixtures): each costs a few seconds.
"""
from __future__ import annotations

import json

import pytest
import torch

from nsa import datasets as D
from nsa import evaluation as E
from nsa.cli import main
from nsa.errors import NSAError
from nsa.models import model_key
from tests.nsa.conftest import tiny_llama

CHOICE_TASKS = [n for n in D.list_tasks() if D.get_task(n).kind != "perplexity" and not D.get_task(n).synthetic]


@pytest.fixture(scope="module")
def tiny(stories):
    """The tiny random Llama with a 64-token context (long examples must be truncated)."""
    return tiny_llama(positions=64), stories[1]


@pytest.fixture(scope="module")
def tiny_run(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-eval")
    events = []
    summary = E.evaluate(*tiny, CHOICE_TASKS + ["wikitext2"], limit=4, out_dir=out, progress=events.append,
                         batch_size=8)
    return summary, out, events


@pytest.fixture(scope="module")
def stories_run(stories, tmp_path_factory):
    out = tmp_path_factory.mktemp("stories-eval")
    summary = E.evaluate(*stories, "sst2,imdb,arc_easy", limit=12, out_dir=out, batch_size=16)
    return summary, out


def test_every_task_evaluates_on_a_tiny_model(tiny_run):
    summary, out, events = tiny_run
    assert set(summary["tasks"]) == set(CHOICE_TASKS) | {"wikitext2"}
    for name in CHOICE_TASKS:
        entry = summary["tasks"][name]
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert entry["n"] == len(records) == 4
        assert [r["index"] for r in records] == [0, 1, 2, 3]
        # the harness's acc is the mean of the per-example records taken from its sample log
        assert entry["acc"] == pytest.approx(sum(r["correct"] for r in records) / 4)
        assert entry["acc_ci95"][0] <= entry["acc"] <= entry["acc_ci95"][1]
        spec = D.get_task(name)
        rows = D.load_examples(name, limit=4)
        for r, row in zip(records, rows):
            assert r["gold"] == D.gold_for(spec, row) and len(r["loglik"]) == len(D.choices_for(spec, row))
            assert r["prediction"] == max(range(len(r["loglik"])), key=r["loglik"].__getitem__)
            assert r["correct"] == (r["prediction"] == r["gold"])
            if "prediction_norm" in r:
                assert r["correct_norm"] == (r["prediction_norm"] == r["gold"])
        assert ("acc_norm" in entry) == ("acc_norm" in spec.metrics)
    assert summary["tasks"]["wikitext2"]["n_windows"] == 4 and summary["tasks"]["wikitext2"]["ppl"] > 1
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(events) > 5
    assert json.loads((out / "summary.json").read_text())["tasks"]["sst2"]["n"] == 4


def test_long_examples_are_truncated_from_the_left_and_counted(tiny_run, tiny):
    """The tiny model has 64 positions: long texts must not crash and each cut example is counted."""
    summary, out, _ = tiny_run
    _, tok = tiny
    for name in ("imdb", "boolq", "sst2"):
        spec = D.get_task(name)
        expected = [any(len(tok.encode(ctx + cont)) > 65 for ctx, cont in D.requests_for(spec, row))
                    for row in D.load_examples(name, limit=4)]
        records = [json.loads(line) for line in (out / f"{name}.jsonl").read_text().splitlines()]
        assert [r["truncated"] for r in records] == expected
        assert summary["tasks"][name]["n_truncated"] == sum(expected)
    assert summary["tasks"]["imdb"]["n_truncated"] == 4 and summary["tasks"]["piqa"]["n_truncated"] > 0


def test_logliks_match_a_direct_computation(stories_run, stories):
    """Sum of log-softmax of the choice tokens given the prompt, computed here with the model itself."""
    summary, out = stories_run
    model, tok = stories
    spec = D.get_task("sst2")
    records = [json.loads(line) for line in (out / "sst2.jsonl").read_text().splitlines()]
    for row, rec in list(zip(D.load_examples("sst2", limit=12), records))[:4]:
        prompt = D.prompt_for(spec, row)
        direct = []
        for choice in D.choices_for(spec, row):
            ctx, whole = tok.encode(prompt), tok.encode(prompt + choice)
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
            cont = whole[len(ctx):]
            direct.append(sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont)))
        assert rec["loglik"] == pytest.approx(direct, abs=1e-3)


def test_stories260k_summary(stories_run):
    summary, out = stories_run
    assert summary["tasks"]["sst2"]["prompt"] == D.SENTIMENT_PROMPT
    assert summary["tasks"]["imdb"]["n_truncated"] > 0  # some IMDB reviews exceed 512 tokens
    assert summary["tasks"]["arc_easy"]["acc_norm"] is not None
    assert summary["timing"]["tokens"] > 0 and summary["timing"]["harness_startup_s"] >= 0
    assert summary["versions"]["lm_eval"] == "0.4.13"


def test_compare_counts_flips_both_ways(stories_run, stories, tmp_path):
    """A really pruned copy (half of every MLP weight zeroed by magnitude) against the dense run."""
    import copy

    summary, dense_dir = stories_run
    pruned = copy.deepcopy(stories[0])
    with torch.no_grad():
        for name, param in pruned.named_parameters():
            if ".mlp." in name:
                threshold = param.abs().flatten().kthvalue(param.numel() // 2).values
                param[param.abs() <= threshold] = 0
    E.evaluate(pruned, stories[1], "sst2,imdb,arc_easy", limit=12, out_dir=tmp_path, batch_size=16)
    result = E.compare(dense_dir, tmp_path, out_path=tmp_path / "comparison.json")
    for task, entry in result["tasks"].items():
        dense = {r["index"]: r for r in E.load_records(dense_dir, task)}
        pr = {r["index"]: r for r in E.load_records(tmp_path, task)}
        assert entry["lost"] == [i for i in dense if dense[i]["correct"] and not pr[i]["correct"]]
        assert entry["gained"] == [i for i in dense if pr[i]["correct"] and not dense[i]["correct"]]
        assert entry["drop"] == pytest.approx(summary["tasks"][task]["acc"] - entry["pruned_acc"])
        assert entry["drop"] == pytest.approx((entry["n_lost"] - entry["n_gained"]) / entry["n"])
        assert entry["drop_ci95"][0] <= entry["drop"] <= entry["drop_ci95"][1]
    assert sum(e["prediction_changed"] for e in result["tasks"].values()) > 0
    assert json.loads((tmp_path / "comparison.json").read_text())["tasks"].keys() == result["tasks"].keys()


def test_dense_results_are_computed_once(stories, tmp_path):
    calls = []
    first = E.dense_evaluation("stories260K", "sst2", limit=6, model=stories[0], tokenizer=stories[1],
                               key="test-stories", progress=calls.append, out_dir=tmp_path / "a")
    assert first["reused"] == [] and calls
    # no model given: everything must come from the cache
    again = E.dense_evaluation("stories260K", "sst2", limit=6, key="test-stories", out_dir=tmp_path / "b")
    assert again["reused"] == ["sst2"] and again["tasks"] == first["tasks"]
    assert (tmp_path / "b" / "sst2.jsonl").read_text() == (tmp_path / "a" / "sst2.jsonl").read_text()


def test_wilson_and_mcnemar():
    lo, hi = E.wilson_interval(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35
    assert E.wilson_interval(5, 10)[0] == pytest.approx(1 - E.wilson_interval(5, 10)[1])
    assert E.mcnemar_exact(0, 0) == 1.0 and E.mcnemar_exact(10, 0) == pytest.approx(2 / 2 ** 10)


def test_bad_input(stories):
    with pytest.raises(NSAError, match="limit must be a positive integer"):
        E.evaluate(*stories, "sst2", limit=0)
    with pytest.raises(NSAError, match="unknown dataset/task 'nope'.*sst2"):
        E.evaluate(*stories, "sst2,nope", limit=2)
    with pytest.raises(NSAError, match="batch_size"):
        E.evaluate(*stories, "sst2", limit=2, batch_size=0)
    with pytest.raises(NSAError, match="not an evaluation folder"):
        E.compare("/nonexistent-a", "/nonexistent-b")


def test_evaluation_leaves_the_callers_random_state_alone(stories):
    import random

    random.seed(123)
    torch.manual_seed(123)
    expected = (random.random(), torch.rand(1).item())
    random.seed(123)
    torch.manual_seed(123)
    E.evaluate(*stories, "sst2", limit=2)
    assert (random.random(), torch.rand(1).item()) == expected


def test_cli_evaluate_with_masks_is_the_pruned_model(stories, stories_dir, tmp_path):
    """`evaluate --masks` applies the masks to the model it loads: the same records as zeroing by hand."""
    import copy

    from safetensors.torch import save_file


    model, tok = stories
    masks = {name: (p.abs() <= p.abs().flatten().kthvalue(p.numel() // 2).values).to(torch.uint8)
             for name, p in model.named_parameters() if ".mlp." in name}
    save_file(masks, str(tmp_path / "masks.safetensors"))
    assert main(["evaluate", "--model", str(stories_dir), "--tasks", "sst2", "--limit", "6", "--masks",
                 str(tmp_path / "masks.safetensors"), "--out", str(tmp_path / "a")]) == 0
    by_hand = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in by_hand.named_parameters():
            if name in masks:
                p[masks[name].bool()] = 0
    E.evaluate(by_hand, tok, "sst2", limit=6, out_dir=tmp_path / "b")
    strip = lambda recs: [{k: v for k, v in r.items()} for r in recs]  # noqa: E731
    assert strip(E.load_records(tmp_path / "a", "sst2")) == strip(E.load_records(tmp_path / "b", "sst2"))


def test_dense_evaluation_loads_and_keys_the_model_itself(stories_dir, tmp_path):
    first = E.dense_evaluation(str(stories_dir), "sentiment140", limit=4, out_dir=tmp_path / "a")
    again = E.dense_evaluation(str(stories_dir), "sentiment140", limit=4)
    assert first["model_key"] == model_key(str(stories_dir)) and first["reused"] == []
    assert again["reused"] == ["sentiment140"] and again["tasks"] == first["tasks"]
    assert (tmp_path / "a" / "sentiment140.jsonl").is_file()
