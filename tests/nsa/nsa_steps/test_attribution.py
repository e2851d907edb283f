"""NSA end to end on stories260K + real SST-2 rows: tables, summary contract, cache reuse, sanity checks of
step 3 (an empty mask changes nothing), validation consistency, bad masks."""
from __future__ import annotations

import json

import pytest
import torch

from nsa.attribution import AttributionConfig, attribute
from nsa.errors import NSAError
from nsa.matching import MatchConfig
from nsa.evaluation import run_evaluation
from nsa.neurons import ablate
from nsa.validation import ValidationConfig, task_accuracy
from nsa.words import WordConfig

LIMIT = 48


def _config(seeds=3):
    return AttributionConfig(words=WordConfig(top_k=8, min_df=2),
                             matching=MatchConfig(batch_size=16, min_occurrences=5),
                             validation=ValidationConfig(n_neurons=5, seeds=seeds, batch_size=16))


def magnitude_masks(model, sparsity: float) -> dict:
    """Per-matrix magnitude masks of every decoder Linear (1 = pruned), as the pruning engine stores them."""
    masks = {}
    for name, p in model.named_parameters():
        if ".layers." in name and p.dim() == 2:
            k = int(p.numel() * sparsity)
            threshold = p.detach().abs().flatten().kthvalue(k).values
            masks[name] = (p.detach().abs() <= threshold).to(torch.uint8)
    return masks


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(stories, tmp_path_factory):
    """One full run shared by the module; it uses the session's private cache (module fixtures start before
    the autouse fixture that points NSA_CACHE_DIR there)."""
    model, tok = stories
    out = tmp_path_factory.mktemp("nsa")
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nsa-cache"))
        summary = attribute(model, tok, "sst2", masks=magnitude_masks(model, 0.5), limit=LIMIT, out_dir=out,
                            progress=events.append, config=_config())
    return summary, out, events


def test_tables_and_summary_contract(run):
    summary, out, events = run
    for name in ("words", "neuron_labels", "top_examples", "neuron_shift", "clusters", "flips"):
        assert (out / f"{name}.jsonl").is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["neurons"] == summary["neurons"]
    labels = _read(out / "neuron_labels.jsonl")
    assert summary["neurons"]["examined"] == 5 * 172 and summary["neurons"]["labelled"] == len(labels) > 0
    per = summary["neurons"]["per_cluster"]
    assert sum(c["labelled"] for c in per.values()) == len(labels)
    assert set(summary["validation"]) == {"negative", "positive"}
    for entry in summary["validation"].values():
        assert set(entry) == {"labelled_drop", "random_drop_mean", "random_drop_std", "n_neurons",
                              "labelled_margin_drop", "random_margin_drop_mean", "random_margin_drop_std"}
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for lab in labels:
        assert lab["label"].startswith(lab["cluster"] + ": ") and len(lab["words"]) <= 3
        assert all(q <= 0.05 for q in lab["q_value"]) and all(s >= 1.0 for s in lab["selectivity"])
        assert lab["selectivity"] == sorted(lab["selectivity"], reverse=True)


def test_step3_tables_agree_with_the_records(run):
    summary, out, _ = run
    shift = _read(out / "neuron_shift.jsonl")
    assert len(shift) == summary["neurons"]["labelled"]
    for r in shift:
        assert r["shift_abs"] == pytest.approx(r["pruned_mean"] - r["dense_mean"])
        assert 0.2 < r["frac_in"] < 0.8 and 0.2 < r["frac_out"] < 0.8
        assert r["label_survives"] == (r["label_overlap"] >= 0.5)
    flips = _read(out / "flips.jsonl")
    acc = summary["accuracy"]
    assert acc["n_lost"] + acc["n_gained"] == len(flips)
    assert acc["drop"] == pytest.approx(100 * (acc["n_lost"] - acc["n_gained"]) / LIMIT)
    clusters = _read(out / "clusters.jsonl")
    for c in (r for r in clusters if r["level"] == "cluster"):
        words = [r for r in clusters if r["level"] == "word" and r["cluster"] == c["name"]]
        assert c["activation_lost"] == pytest.approx(sum(w["activation_lost"] for w in words))


def test_cache_reuse_and_an_empty_mask_changes_nothing(stories, run, tmp_path):
    model, tok = stories
    summary, out, _ = run
    zero = {k: torch.zeros_like(v) for k, v in magnitude_masks(model, 0.5).items()}
    again = attribute(model, tok, "sst2", masks=zero, limit=LIMIT, out_dir=tmp_path, config=_config())
    assert again["dense_cache_reused"] and again["validation"] == summary["validation"]
    assert _read(tmp_path / "neuron_labels.jsonl") == _read(out / "neuron_labels.jsonl")
    for r in _read(tmp_path / "neuron_shift.jsonl"):
        assert r["shift_abs"] == pytest.approx(0, abs=1e-6) and r["label_overlap"] == 1.0
        assert r["frac_in"] == r["frac_out"] == 0
    assert _read(tmp_path / "flips.jsonl") == [] and again["accuracy"]["drop"] == 0
    for r in _read(tmp_path / "top_examples.jsonl"):  # nothing pruned: the pruned view equals the dense one
        assert r["pruned_activations"] == pytest.approx(r["activations"], abs=1e-4)


def test_top_examples_carry_the_pruned_models_activations(stories, run):
    """The side-by-side view: the pruned model's activation of the same neuron on the same tokens, checked
    against a forward-pre-hook on the pruned copy's down projection."""
    from nsa.datasets import get_task, load_examples, prompt_for
    from nsa.masks import pruned_copy
    from nsa.neurons import neuron_sites

    model, tok = stories
    _, out, _ = run
    rows = _read(out / "top_examples.jsonl")
    assert rows and all(len(r["pruned_activations"]) == len(r["activations"]) == len(r["tokens"]) for r in rows)
    assert any(r["pruned_activations"] != r["activations"] for r in rows)  # half the weights are gone
    row = rows[0]
    pruned = pruned_copy(model, magnitude_masks(model, 0.5))
    spec = get_task("sst2")
    example = {e["index"]: e for e in load_examples(spec, LIMIT)}[row["example"]]
    prompt = prompt_for(spec, example)
    enc = tok(prompt, return_offsets_mapping=True)
    seen = {}
    site = neuron_sites(pruned)[row["layer"]]
    handle = site.out_module.register_forward_pre_hook(lambda m, args: seen.__setitem__("a", args[0][0]))
    with torch.no_grad():
        pruned(input_ids=torch.tensor([enc["input_ids"]]))
    handle.remove()
    tokens = [prompt[a:b] for a, b in enc["offset_mapping"]]
    start = next(i for i in range(len(tokens)) if tokens[i:i + len(row["tokens"])] == row["tokens"])
    direct = seen["a"][start:start + len(row["tokens"]), row["index"]].tolist()
    assert row["pruned_activations"] == pytest.approx(direct, abs=1e-3)


def test_validation_drop_is_the_ablated_accuracy(stories, run):
    model, tok = stories
    summary, _, _ = run
    from nsa.neurons import neuron_sites

    base = summary["validation_detail"]["baseline_accuracy"]
    assert base == summary["accuracy"]["dense"]
    for cluster, detail in summary["validation_detail"]["clusters"].items():
        if "neurons" not in detail:
            continue
        neurons = {}
        for layer, i in detail["neurons"]:
            neurons.setdefault(layer, []).append(i)
        acc = task_accuracy(model, tok, "sst2", LIMIT, 16, neuron_sites(model), neurons)
        assert summary["validation"][cluster]["labelled_drop"] == pytest.approx(100 * (base - acc))
        assert len(detail["random_drops"]) == 3
        # the margin drop: mean over this class's examples of (gold - other) log-likelihood lost, by hand
        gold_class = ["negative", "positive"].index(cluster)
        _, before = run_evaluation(model, tok, "sst2", limit=LIMIT)
        with ablate(neuron_sites(model), neurons):
            _, after = run_evaluation(model, tok, "sst2", limit=LIMIT)
        lost = [(b["loglik"][g] - b["loglik"][1 - g]) - (a["loglik"][g] - a["loglik"][1 - g])
                for b, a in zip(before["sst2"], after["sst2"]) if (g := b["gold"]) == gold_class]
        assert summary["validation"][cluster]["labelled_margin_drop"] == pytest.approx(sum(lost) / len(lost),
                                                                                        abs=1e-6)
        assert len(detail["random_margin_drops"]) == 3


def test_masks_of_another_model_are_refused(stories, tiny, tmp_path):
    model, tok = stories
    other = magnitude_masks(tiny[0], 0.5)
    with pytest.raises(NSAError, match="masks do not fit this model"):
        attribute(model, tok, "sst2", masks=other, limit=LIMIT, out_dir=tmp_path, config=_config())
    assert not (tmp_path / "summary.json").exists()


def test_bad_settings_are_refused(stories, tmp_path):
    model, tok = stories
    with pytest.raises(NSAError, match="at least 3"):
        attribute(model, tok, "sst2", limit=LIMIT, out_dir=tmp_path, config=_config(seeds=2))
    with pytest.raises(NSAError, match="classification"):
        attribute(model, tok, "arc_easy", limit=8, out_dir=tmp_path)


def test_gradient_words_run_and_are_cached(stories, tmp_path):
    model, tok = stories
    config = _config()
    config.validate = False
    first = attribute(model, tok, "sst2", words="gradient", limit=24, out_dir=tmp_path / "a", config=config)
    second = attribute(model, tok, "sst2", words="gradient", limit=24, out_dir=tmp_path / "b", config=config)
    assert first["words"]["method"] == "gradient" and second["dense_cache_reused"]
    assert _read(tmp_path / "a" / "words.jsonl") == _read(tmp_path / "b" / "words.jsonl")
    assert first["validation"] == {} and "neuron_shift" not in {p.stem for p in (tmp_path / "a").iterdir()}


def test_sparsegpt_run_folder_files(tiny, tmp_path):
    """Masks and SparseGPT weights from the pruning engine's files: the pruned pass uses the updated weights."""
    import copy

    import pruners
    from pruners.io import save_result

    model, tok = tiny
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    result = pruners.prune(copy.deepcopy(model), calib, pruners.PruneConfig(method="sparsegpt", sparsity=0.5))
    save_result(result, tmp_path / "run", save_weights=True)
    config = _config()
    config.validate = False
    with_w = attribute(model, tok, "sst2", masks=tmp_path / "run" / "masks.safetensors",
                       weights=tmp_path / "run" / "weights.safetensors", limit=24, out_dir=tmp_path / "w",
                       config=config)
    without = attribute(model, tok, "sst2", masks=tmp_path / "run" / "masks.safetensors", limit=24,
                        out_dir=tmp_path / "m", config=config)
    assert with_w["dense_cache_reused"] is False and without["dense_cache_reused"] is True
    a, b = _read(tmp_path / "w" / "neuron_shift.jsonl"), _read(tmp_path / "m" / "neuron_shift.jsonl")
    assert len(a) == len(b) > 0
    assert any(abs(x["pruned_mean"] - y["pruned_mean"]) > 1e-4 for x, y in zip(a, b))
    assert [x["frac_out"] for x in a] == [y["frac_out"] for y in b]
