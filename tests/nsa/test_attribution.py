"""NSA end to end on stories260K + real SST-2 rows: tables, summary contract, cache reuse, sanity checks of
step 3 (an empty mask changes nothing), validation consistency, bad masks."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import pruners
from nsa import attribution as A
from nsa.datasets import get_task, load_examples, prompt_for
from nsa.errors import NSAError
from nsa.evaluation import dense_entry, dense_evaluation, load_records, run_evaluation
from nsa.masks import apply_masks, load_masks, load_weights
from nsa.neurons import ablate, neuron_sites
from nsa.validation import ValidationConfig, sequential_p, task_scores, validate
from pruners.io import save_result

LIMIT = 48
# stories260K is at chance on SST-2 (a toy story model): NSA would label nothing by default, so these tests ask
# for labels anyway; test_a_model_at_chance_labels_nothing_by_default checks the default
OPTIONS = {"top_k": 8, "min_df": 2, "min_occurrences": 5, "n_ablate": 5, "label_at_chance": True}


def _config(**options) -> A.NSAConfig:
    words = options.pop("words", "learned")
    return A.NSAConfig(task="sst2", words=words, limit=options.pop("limit", LIMIT), options=OPTIONS | options)


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


def attribute(model, tok, config, key, masks=None, weights=None, out_dir=None, progress=None):
    """NSA as a job runs it: dense records from the shared dense-evaluation cache, the model pruned in place
    (on a copy here: the session's model stays dense), pruned records of the same examples. The summary gets
    `reused`: whether the dense part came from the cache (from the progress messages)."""
    events = []
    progress = progress or events.append
    model = copy.deepcopy(model)
    dense_evaluation("test-model", ["sst2"], limit=config.limit, key=key, model=model, tokenizer=tok)
    dense = load_records(dense_entry(key, get_task("sst2"), config.limit).folder, "sst2")
    pruned = lambda: run_evaluation(model, tok, "sst2", limit=config.limit)[1]["sst2"]  # noqa: E731
    summary = A.attribute(model, tok, config, "test-model", key, dense, masks=masks, weights=weights,
                          pruned_records=pruned, out_dir=out_dir, progress=lambda e: (progress(e), events.append(e)))
    summary["reused"] = any("reused from the cache" in e.message for e in events if "dense part" in e.message)
    return summary, dense


@pytest.fixture(scope="module")
def run(stories, tmp_path_factory):
    """One full run shared by the module; it uses the session's private cache (module fixtures start before
    the autouse fixture that points NSA_CACHE_DIR there)."""
    model, tok = stories
    out = tmp_path_factory.mktemp("nsa")
    events = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NSA_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "nsa-cache"))
        summary, dense = attribute(model, tok, _config(), "stories", masks=magnitude_masks(model, 0.5),
                                   out_dir=out, progress=events.append)
    return summary, out, events, dense


def test_tables_and_summary_contract(run):
    summary, out, events, _ = run
    for name in ("words", "neuron_labels", "top_examples", "neuron_shift", "clusters", "flips"):
        assert (out / f"{name}.jsonl").is_file(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["neurons"] == summary["neurons"]
    labels = _read(out / "neuron_labels.jsonl")
    assert summary["neurons"]["examined"] == 5 * 172 and summary["neurons"]["labelled"] == len(labels) > 0
    per = summary["neurons"]["per_cluster"]
    assert sum(c["labelled"] for c in per.values()) == len(labels)
    assert set(summary["validation"]) == {"negative", "positive"}
    for cluster, entry in summary["validation"].items():
        assert set(entry) == {"labelled_drop", "random_drop_mean", "random_drop_std", "n_neurons",
                              "labelled_margin_drop", "random_margin_drop_mean", "random_margin_drop_std",
                              "p_margin", "p_accuracy", "validated", "n_examples", "draws"}
        detail = summary["validation_detail"]["clusters"][cluster]
        if entry["n_neurons"]:  # the verdict states the test, its p-value and the number of draws made
            made = entry["draws"]
            assert f"p = {entry['p_margin']:.3g}, {made} draws" in detail["verdict"]
            assert entry["validated"] == (entry["p_margin"] < 0.05)
            assert len(detail["random_margin_drops"]) == made and 2 <= made <= 20
            exceed = sum(x >= entry["labelled_margin_drop"] for x in detail["random_margin_drops"])
            # sequential (the default): stopped at the 2nd random set losing as much (p = 2 / draws made), or
            # every draw made and the fixed-sample p
            assert entry["p_margin"] == (exceed / made if made < 20 else (1 + exceed) / 21)
            assert made == 20 or exceed == 2
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    for lab in labels:
        assert lab["label"].startswith(lab["cluster"] + ": ") and len(lab["words"]) <= 3
        assert all(q <= 0.05 for q in lab["q_value"]) and all(s >= 1.0 for s in lab["selectivity"])
        assert lab["selectivity"] == sorted(lab["selectivity"], reverse=True)


def test_step3_tables_agree_with_the_records(run):
    summary, out, _, dense = run
    shift = _read(out / "neuron_shift.jsonl")
    assert len(shift) == summary["neurons"]["labelled"]
    for r in shift:
        assert r["shift_abs"] == pytest.approx(r["pruned_mean"] - r["dense_mean"])
        assert 0.2 < r["frac_in"] < 0.8 and 0.2 < r["frac_out"] < 0.8
        assert r["label_survives"] == (r["label_overlap"] >= 0.5)
    flips = _read(out / "flips.jsonl")
    by_index = {r["index"]: r for r in dense}
    assert all(by_index[f["index"]]["correct"] == (f["direction"] == "lost") for f in flips)
    assert "accuracy" not in summary  # accuracy figures come from the evaluation's comparison alone
    clusters = _read(out / "clusters.jsonl")
    labels = _read(out / "neuron_labels.jsonl")
    for c in (r for r in clusters if r["level"] == "cluster"):  # each labelled neuron counted once
        assert c["n_neurons"] == summary["neurons"]["per_cluster"].get(c["name"], {}).get("labelled", 0)
        assert c["n_neurons"] == sum(lab["cluster"] == c["name"] for lab in labels)
        words = [r for r in clusters if r["level"] == "word" and r["cluster"] == c["name"]]
        assert c["activation_lost"] == pytest.approx(sum(w["activation_lost"] for w in words))


def test_cache_reuse_and_an_empty_mask_changes_nothing(stories, run, tmp_path):
    model, tok = stories
    summary, out, _, _ = run
    zero = {k: torch.zeros_like(v) for k, v in magnitude_masks(model, 0.5).items()}
    again, _ = attribute(model, tok, _config(), "stories", masks=zero, out_dir=tmp_path)
    assert again["reused"] and again["validation"] == summary["validation"]
    assert _read(tmp_path / "neuron_labels.jsonl") == _read(out / "neuron_labels.jsonl")
    for r in _read(tmp_path / "neuron_shift.jsonl"):
        assert r["shift_abs"] == pytest.approx(0, abs=1e-6) and r["label_overlap"] == 1.0
        assert r["frac_in"] == r["frac_out"] == 0
    assert _read(tmp_path / "flips.jsonl") == []
    for r in _read(tmp_path / "top_examples.jsonl"):  # nothing pruned: the pruned view equals the dense one
        assert r["pruned_activations"] == pytest.approx(r["activations"], abs=1e-4)


def test_top_examples_carry_the_pruned_models_activations(stories, run):
    """The side-by-side view: the pruned model's activation of the same neuron on the same tokens, checked
    against a forward-pre-hook on the pruned copy's down projection."""
    model, tok = stories
    _, out, _, _ = run
    rows = _read(out / "top_examples.jsonl")
    assert rows and all(len(r["pruned_activations"]) == len(r["activations"]) == len(r["tokens"]) for r in rows)
    assert any(r["pruned_activations"] != r["activations"] for r in rows)  # half the weights are gone
    row = rows[0]
    pruned = apply_masks(copy.deepcopy(model), magnitude_masks(model, 0.5))
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
    """A label cluster is scored on its own class's examples: the labelled drop is the evaluator's accuracy on
    them with those neurons zeroed, against the dense records of the same examples (no second dense
    evaluation); the margin drop is the gold margin lost on them, by hand."""
    model, tok = stories
    summary, _, _, dense = run
    assert summary["validation_detail"]["baseline_accuracy"] == sum(r["correct"] for r in dense) / len(dense)
    for cluster, detail in summary["validation_detail"]["clusters"].items():
        if "neurons" not in detail:
            continue
        neurons = {}
        for layer, i in detail["neurons"]:
            neurons.setdefault(layer, []).append(i)
        gold_class = ["negative", "positive"].index(cluster)
        mine = [r for r in dense if r["gold"] == gold_class]
        base = sum(r["correct"] for r in mine) / len(mine)
        only = {r["index"] for r in mine}
        acc, _ = task_scores(model, tok, get_task("sst2"), LIMIT, 16, neuron_sites(model), neurons, only)
        assert summary["validation"][cluster]["labelled_drop"] == pytest.approx(100 * (base - acc))
        assert summary["validation"][cluster]["n_examples"] == len(mine)
        assert len(detail["random_drops"]) == len(detail["random_margin_drops"]) == summary["validation"][cluster]["draws"]
        with ablate(neuron_sites(model), neurons):
            _, after = run_evaluation(model, tok, "sst2", limit=LIMIT)
        lost = [(b["loglik"][g] - b["loglik"][1 - g]) - (a["loglik"][g] - a["loglik"][1 - g])
                for b, a in zip(dense, after["sst2"]) if (g := b["gold"]) == gold_class]
        # the by-hand pass batches all examples, the validation only the class's: padding differs (~1e-6 nats)
        assert summary["validation"][cluster]["labelled_margin_drop"] == pytest.approx(sum(lost) / len(lost),
                                                                                        abs=1e-4)


def test_sequential_validation_gives_the_verdict_of_every_draw(stories, run):
    """Besag-Clifford stopping: the same verdict as all 20 draws, its draws the first of the full test's, and a
    cluster whose labels do not hold is decided in fewer scorings. Labels drawn at random here (every neuron of
    layer 1 'negative'), so the random controls often lose as much: the early stop is exercised for real."""
    model, tok = stories
    summary, out, _, dense = run
    sites = neuron_sites(model)
    sizes = [172] * 5
    labels = [{"layer": 1, "index": i, "cluster": "negative", "top_selectivity": float(i % 7)} for i in range(30)]
    labels += [{"layer": lab["layer"], "index": lab["index"], "cluster": lab["cluster"],
                "top_selectivity": lab["top_selectivity"]} for lab in _read(out / "neuron_labels.jsonl")
               if lab["cluster"] == "positive"]
    config = dict(n_neurons=5, draws=20, batch_size=16)
    seq, seq_detail = validate(model, tok, "sst2", LIMIT, sites, sizes, labels, ["negative", "positive"], dense,
                               ValidationConfig(**config))
    full, full_detail = validate(model, tok, "sst2", LIMIT, sites, sizes, labels, ["negative", "positive"], dense,
                                 ValidationConfig(**config, sequential=False))
    stopped = 0
    for cluster in ("negative", "positive"):
        s, f = seq[cluster], full[cluster]
        if not f["n_neurons"]:
            continue
        assert s["validated"] == f["validated"] and f["draws"] == 20
        drops = full_detail["clusters"][cluster]["random_margin_drops"]
        assert seq_detail["clusters"][cluster]["random_margin_drops"] == drops[:s["draws"]]
        assert s["labelled_margin_drop"] == f["labelled_margin_drop"]
        if s["draws"] < 20:
            stopped += 1
            assert not s["validated"] and s["p_margin"] == 2 / s["draws"] >= 0.1
            assert "stopped after" in seq_detail["clusters"][cluster]["verdict"]
        else:
            assert s["p_margin"] == f["p_margin"]
    assert stopped >= 1  # the random 'negative' labels were decided early


def test_sequential_p_value():
    """h / l at the h-th exceedance before the last draw; the fixed-sample p when every draw was made."""
    assert sequential_p(1.0, [0.5, 2.0, 0.1, 1.5], draws=20, stop_after=2) == 2 / 4
    assert sequential_p(1.0, [0.5] * 19 + [2.0], draws=20, stop_after=2) == 2 / 21
    assert sequential_p(1.0, [0.5] * 20, draws=20, stop_after=2) == 1 / 21
    assert sequential_p(1.0, [2.0, 2.0], draws=20, stop_after=None) == 3 / 3


def test_masks_of_another_model_are_refused(stories, tiny, tmp_path):
    model, tok = stories
    other = magnitude_masks(tiny[0], 0.5)
    with pytest.raises(NSAError, match="masks do not fit this model"):
        attribute(model, tok, _config(), "stories", masks=other, out_dir=tmp_path)
    assert not (tmp_path / "summary.json").exists()


def test_bad_settings_are_refused():
    with pytest.raises(NSAError, match="options.seeds: must be at least 20"):
        _config(seeds=3)
    with pytest.raises(NSAError, match="task: NSA needs a labelled classification task; 'arc_easy'"):
        A.NSAConfig(task="arc_easy")
    with pytest.raises(NSAError, match="words: expected learned, gradient or a word file"):
        A.NSAConfig(task="sst2", words="nonsense")


def test_gradient_words_run_and_are_cached(stories, tmp_path):
    model, tok = stories
    config = _config(words="gradient", limit=24, validation=False)
    first, _ = attribute(model, tok, config, "stories", out_dir=tmp_path / "a")
    second, _ = attribute(model, tok, config, "stories", out_dir=tmp_path / "b")
    assert first["words"]["method"] == "gradient" and second["reused"]
    assert _read(tmp_path / "a" / "words.jsonl") == _read(tmp_path / "b" / "words.jsonl")
    assert first["validation"] == {} and "neuron_shift" not in {p.stem for p in (tmp_path / "a").iterdir()}


def test_sparsegpt_run_folder_files(tiny, tmp_path):
    """Masks and SparseGPT weights from the pruning engine's files: the pruned pass uses the updated weights."""
    model, tok = tiny
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    result = pruners.prune(copy.deepcopy(model), calib, pruners.PruneConfig(method="sparsegpt", sparsity=0.5))
    save_result(result, tmp_path / "run", save_weights=True)
    config = _config(limit=24, validation=False)
    masks, weights = load_masks(tmp_path / "run"), load_weights(tmp_path / "run" / "weights.safetensors")
    with_w, _ = attribute(model, tok, config, "tiny", masks=masks, weights=weights, out_dir=tmp_path / "w")
    without, _ = attribute(model, tok, config, "tiny", masks=masks, out_dir=tmp_path / "m")
    assert not with_w["reused"] and without["reused"]
    a, b = _read(tmp_path / "w" / "neuron_shift.jsonl"), _read(tmp_path / "m" / "neuron_shift.jsonl")
    assert len(a) == len(b) > 0
    assert any(abs(x["pruned_mean"] - y["pruned_mean"]) > 1e-4 for x, y in zip(a, b))
    assert [x["frac_out"] for x in a] == [y["frac_out"] for y in b]


def test_a_model_at_chance_labels_nothing_by_default(stories, tmp_path):
    """stories260K scores near 0.5 on SST-2: its "labels" would describe noise, so by default NSA labels nothing
    and says why; label_at_chance asks for them anyway."""
    model, tok = stories
    summary, dense = attribute(model, tok, _config(label_at_chance=False, validation=False), "stories",
                               out_dir=tmp_path)
    chance = summary["dense_vs_chance"]
    assert not chance["above_chance"] and chance["n"] == LIMIT and chance["p_value"] >= 0.05
    assert summary["neurons"]["labelled"] == 0 and _read(tmp_path / "neuron_labels.jsonl") == []
