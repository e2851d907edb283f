"""Neuron Semantic Attribution end to end: words -> dense matching -> validation -> dense vs pruned.

`attribute(model, tokenizer, task, masks=None, weights=None, words="learned", limit=None, out_dir=...)`
runs the three NSA steps (Ding et al., arXiv 2503.01542; formulas and tests as chosen in `nsa.words`,
`nsa.matching`, `nsa.comparison`) plus the causal validation (`nsa.validation`), and writes to `out_dir`:

  words.jsonl         word, cluster, score, frequency, occurrences
  neuron_labels.jsonl one row per labelled neuron (layer, index, label, cluster, words, selectivity, ...)
  top_examples.jsonl  token activations of labelled neurons on their top examples (dense, and pruned with masks)
  neuron_shift.jsonl  per labelled neuron: dense vs pruned activation on its words, label survival, fractions
  clusters.jsonl      per word and per cluster: activation lost (level = word | cluster)
  flips.jsonl         examples whose correctness changed, with words and neurons that lost most
  summary.json        counts, accuracy, validation {cluster: labelled_drop, random_drop_mean, ...}

(the last three only with masks; columns in docs/nsa.md). The dense part (word selection, running sums,
top examples, dense evaluation records, validation) depends only on (model, task, word selection, limit,
settings) and is cached under `cache_dir()/dense/<model_key>/nsa/<task>-<limit>-<hash>/`, so every pruned
run of a model reuses it.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from nsa.atomic import atomic_dir, write_json, write_jsonl
from nsa.errors import NSAError
from nsa.matching import MatchConfig
from nsa.validation import ValidationConfig
from nsa.words import WordConfig
from pruners.registry import Option

CACHE_FORMAT = 3  # 2: gold-margin drops; 3: beats_random needs more than one example


@dataclass
class AttributionConfig:
    """All NSA settings: word selection, matching/significance, validation."""

    words: WordConfig = field(default_factory=WordConfig)
    matching: MatchConfig = field(default_factory=MatchConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    validate: bool = True


NSA_OPTIONS: tuple[Option, ...] = (  # declared like the pruners' options (one mechanism)
    Option("top_k", int, 20, min=1, help="influential words per class"),
    Option("min_df", int, 3, min=1, help="minimum examples containing a word (learned words)"),
    Option("min_occurrences", int, 10, min=1, help="occurrences a word needs before it is tested"),
    Option("alpha", float, 0.05, min=0.0, max=1.0,
           help="Benjamini-Hochberg false discovery rate of the labelling test (0 and 1 excluded)"),
    Option("min_selectivity", float, 1.0, min=0.0, help="minimum selectivity (σ) of a labelling word"),
    Option("n_ablate", int, None, min=1,
           help="labelled neurons ablated per cluster (default: 2% of MLP neurons, at least 10)"),
    Option("seeds", int, 3, min=3, help="random-neuron controls of the validation (at least 3)"),
    Option("validation", bool, True, help="the ablation check of the labels"),
)


def nsa_defaults() -> dict[str, Any]:
    return {o.name: o.default for o in NSA_OPTIONS}


def check_nsa_options(options: dict[str, Any],
                      label: Callable[[str], str] = lambda name: f"nsa.options.{name}") -> dict[str, Any]:
    """All NSA options with defaults filled in; unknown names, wrong types and out-of-range values are
    `NSAError`s naming the option as `label(name)` says (the spec key, or the CLI flag)."""
    by_name = {o.name: o for o in NSA_OPTIONS}
    unknown = sorted(set(options) - set(by_name))
    if unknown:
        raise NSAError(f"{label(unknown[0])}: unknown NSA option (known: {', '.join(by_name)})")
    out = nsa_defaults()
    for name, value in options.items():
        opt = by_name[name]
        if value is None and opt.default is None:
            continue  # an automatic default (n_ablate)
        typed, problem = opt.check(value)
        if problem is None and name == "alpha" and typed in (0.0, 1.0):
            problem = opt.range_text()  # an FDR of 0 or 1 is no test
        if problem is not None:
            raise NSAError(f"{label(name)}: {problem}, got {value!r}")
        out[name] = typed
    return out


def attribution_config(options: dict[str, Any] | None = None, batch_size: int = 16,
                       label: Callable[[str], str] = lambda name: f"nsa.options.{name}") -> AttributionConfig:
    """The `AttributionConfig` of checked `options` (see `NSA_OPTIONS`); `batch_size` changes no result."""
    o = check_nsa_options(options or {}, label)
    return AttributionConfig(
        words=WordConfig(top_k=o["top_k"], min_df=o["min_df"], batch_size=batch_size),
        matching=MatchConfig(batch_size=batch_size, min_occurrences=o["min_occurrences"], alpha=o["alpha"],
                             min_selectivity=o["min_selectivity"]),
        validation=ValidationConfig(n_neurons=o["n_ablate"], seeds=o["seeds"], batch_size=batch_size),
        validate=o["validation"])


class _Progress:
    """Maps stage fractions into the caller's callback as `nsa.evaluation.ProgressEvent`s."""

    def __init__(self, callback: Callable | None):
        self.callback = callback

    def stage(self, lo: float, hi: float, name: str) -> Callable:
        def report(fraction, message: str = "") -> None:
            if hasattr(fraction, "fraction"):
                fraction, message = fraction.fraction, fraction.message
            if self.callback is not None:
                from nsa.evaluation import ProgressEvent

                value = lo + (hi - lo) * min(max(float(fraction), 0.0), 1.0)
                self.callback(ProgressEvent(fraction=value, message=message or name, stage=name))

        return report


def model_fingerprint(model) -> str:
    """Cache key of an in-memory model without an id: config plus a strided sample of every parameter."""
    import torch

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.named_parameters():
            flat = p.detach().reshape(-1)
            step = max(1, flat.numel() // 4096)
            h.update(name.encode())
            h.update(str(tuple(p.shape)).encode())
            h.update(flat[::step].float().cpu().numpy().tobytes())
    return "mem-" + h.hexdigest()[:16]


def _resolve_masks(model, masks, weights):
    from nsa.masks import check_masks, load_masks

    if isinstance(masks, (str, Path)):
        masks = load_masks(masks)
    check_masks(model, masks)
    if isinstance(weights, (str, Path)):
        from safetensors.torch import load_file

        if not Path(weights).is_file():
            raise NSAError(f"weights file {weights} does not exist")
        weights = load_file(str(weights))
    return masks, weights


def attribute(model, tokenizer, task: str, masks: Any = None, weights: Any = None, words: str = "learned",
              limit: int | None = None, out_dir: str | Path | None = None, progress: Callable | None = None,
              config: AttributionConfig | None = None, model_id: str | None = None) -> dict:
    """Run NSA on `task` for the dense `model` (and its pruned version when `masks` are given).

    `masks`/`weights`: paths or dicts (pruners' masks, SparseGPT's weights). `words`: learned, gradient or a
    word file. `model_id` (e.g. "demo") keys the dense cache by `nsa.models.model_key`; without it the
    model's content fingerprint is used. Returns the summary (also written to `out_dir/summary.json`).
    """
    from nsa import datasets as D
    from nsa import matching as M
    from nsa.neurons import layer_sizes, neuron_sites

    config = config or AttributionConfig()
    if config.validate and config.validation.seeds < 3:
        raise NSAError(f"validation needs at least 3 random seeds, got {config.validation.seeds}")
    started = time.time()
    prog = _Progress(progress)
    spec = D.get_task(task)
    if spec.kind != "classification":
        raise NSAError(f"NSA needs a labelled classification task; {spec.name!r} is {spec.kind}")
    sites = neuron_sites(model)
    sizes = layer_sizes(sites)
    if masks is not None:
        masks, weights = _resolve_masks(model, masks, weights)
    examples = D.load_examples(spec, limit=limit)
    texts = {int(ex["index"]): D.example_text(spec, ex) for ex in examples}

    key = _model_key(model, model_id)
    selection = _select(spec, examples, words, config, model, tokenizer, prog.stage(0.0, 0.1, "words"), key,
                        limit)
    word_list = selection.words()
    clusters = [selection.cluster_of()[w] for w in word_list]
    encoded = M.encode(spec, examples, tokenizer, word_list, M.context_length(model, tokenizer,
                                                                             config.matching.max_length))
    folder = _dense_folder(key, spec.name, limit, selection.fingerprint(), config)
    dense = _dense_part(folder, model, tokenizer, spec, limit, sites, sizes, encoded, selection, word_list,
                        clusters, texts, config, prog)
    matching = M.label_neurons(dense["state"], word_list, clusters, config.matching)

    summary: dict[str, Any] = {
        "task": spec.name, "model": model_id or getattr(model.config, "_name_or_path", ""), "model_key": key,
        "limit": limit, "n_examples": len(examples),
        "words": {"method": selection.method, "n_words": len(word_list), "clusters": selection.clusters,
                  **selection.details},
        "neurons": _neuron_counts(matching, selection.clusters),
        "validation": dense["validation"], "validation_detail": dense["validation_detail"],
        "matching": asdict(config.matching) | {"n_tokens": matching.n_tokens, "test": SIGNIFICANCE_NOTE},
        "dense_cache": str(folder), "dense_cache_reused": dense["reused"],
        "accuracy": {"dense": _acc(dense["records"]), "n": len(dense["records"])},
    }
    tables: dict[str, list[dict]] = {"words": selection.rows, "neuron_labels": matching.labels,
                                     "top_examples": dense["top_examples"]}
    if masks is not None:
        tables |= _pruned_part(model, masks, weights, tokenizer, spec, limit, sites, sizes, encoded, matching,
                               word_list, clusters, texts, dense["records"], dense["top_examples"], config,
                               summary, prog)
    summary["timing_s"] = time.time() - started
    summary["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if out_dir is not None:
        write_outputs(out_dir, tables, summary)
    prog.stage(0, 1, "done")(1.0, "attribution done")
    return summary


SIGNIFICANCE_NOTE = ("one-sided permutation test of word positions (exact permutation mean/variance of the "
                     "word-occurrence mean over the text tokens, normal approximation), words with fewer than "
                     "min_occurrences not tested, Benjamini-Hochberg FDR alpha over all tested (neuron, word) "
                     "pairs, and selectivity >= min_selectivity")


def _select(spec, examples, words, config, model, tokenizer, report, key: str, limit):
    """Step 1, cached beside the dense matching for `gradient` (a pass over the model); others are cheap."""
    from nsa.paths import cache_dir
    from nsa.words import WordSelection, select_words

    path = None
    if words == "gradient":
        blob = json.dumps([CACHE_FORMAT, asdict(config.words) | {"batch_size": None, "device": None}],
                          sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
        path = cache_dir() / "dense" / key / "nsa" / f"words-{spec.name}-{limit or 'all'}-gradient-{digest}.json"
        if path.is_file():
            report(1.0, "gradient words reused from the cache")
            return WordSelection(**json.loads(path.read_text(encoding="utf-8")))
    selection = select_words(spec, examples, words, config.words, model, tokenizer, report)
    if not selection.rows:
        raise NSAError(f"word selection {words!r} found no influential words (try a smaller min_df or more "
                       f"examples)")
    if path is not None:
        write_json(path, asdict(selection))
    return selection


def _model_key(model, model_id: str | None) -> str:
    if model_id:
        from nsa.models import model_key

        return model_key(model_id)
    return model_fingerprint(model)


def _dense_folder(key: str, task: str, limit, word_fp: str, config: AttributionConfig) -> Path:
    from nsa.paths import cache_dir

    blob = json.dumps([CACHE_FORMAT, word_fp, config.matching.key(), asdict(config.validation) | {
        "batch_size": None}, config.validate], sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:12]
    return cache_dir() / "dense" / key / "nsa" / f"{task}-{limit or 'all'}-{digest}"


def _dense_part(folder: Path, model, tokenizer, spec, limit, sites, sizes, encoded, selection, word_list,
                clusters, texts, config, prog) -> dict:
    """Running sums, top examples, dense records and validation: loaded from the cache or computed once."""
    from safetensors.torch import load_file, save_file

    from nsa import matching as M

    if (folder / "done.json").is_file():
        prog.stage(0.1, 0.6, "dense")(1.0, "dense matching reused from the cache")
        return {"state": load_file(str(folder / "state.safetensors")), "reused": True,
                "top_examples": _read_jsonl(folder / "top_examples.jsonl"),
                "records": _read_jsonl(folder / "dense_records.jsonl"),
                **json.loads((folder / "validation.json").read_text(encoding="utf-8"))}
    acc = M.stream(model, encoded, sites, sizes, len(word_list), config.matching.batch_size,
                   top_m=config.matching.top_examples, progress=prog.stage(0.1, 0.35, "dense matching"),
                   message="dense matching")
    state = acc.state()
    matching = M.label_neurons(state, word_list, clusters, config.matching)
    top = M.top_examples(model, sites, encoded, state, matching.labels, texts,
                         config.matching.top_example_neurons, config.matching.batch_size)
    records = _records(model, tokenizer, spec, limit, config.matching.batch_size)
    prog.stage(0.35, 0.4, "dense evaluation")(1.0, "dense evaluation done")
    if config.validate:
        validation, detail = _validate(model, tokenizer, spec, limit, sites, sizes, matching, selection,
                                       config, prog.stage(0.4, 0.6, "validation"))
    else:
        validation, detail = {}, {"note": "validation skipped"}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "state.safetensors"))
        write_jsonl(tmp / "top_examples.jsonl", top)
        write_jsonl(tmp / "dense_records.jsonl", records)
        write_json(tmp / "validation.json", {"validation": validation, "validation_detail": detail})
        write_jsonl(tmp / "words.jsonl", selection.rows)
        write_json(tmp / "done.json", {"format": CACHE_FORMAT, "words": selection.method,
                                       "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return {"state": state, "reused": False, "top_examples": top, "records": records,
            "validation": validation, "validation_detail": detail}


def _validate(model, tokenizer, spec, limit, sites, sizes, matching, selection, config, report):
    from nsa.validation import validate

    return validate(model, tokenizer, spec.name, limit, sites, sizes, matching.labels, selection.clusters,
                    config.validation, report)


def _records(model, tokenizer, spec, limit, batch_size) -> list[dict]:
    """The evaluator's per-example records (prediction, log-likelihoods, correct)."""
    from nsa.evaluation import run_evaluation

    _summary, records = run_evaluation(model, tokenizer, spec.name, limit=limit, batch_size=batch_size)
    return records[spec.name]


def _pruned_part(model, masks, weights, tokenizer, spec, limit, sites, sizes, encoded, matching, word_list,
                 clusters, texts, dense_records, top_examples, config, summary, prog) -> dict[str, list[dict]]:
    """Step 3: the same prompts through the pruned copy; shifts, cluster losses, flips."""
    from nsa import comparison as C
    from nsa import matching as M
    from nsa.masks import pruned_copy
    from nsa.neurons import neuron_sites, pruned_fractions

    pruned = pruned_copy(model, masks, weights)
    p_sites = neuron_sites(pruned)
    acc = M.stream(pruned, encoded, p_sites, sizes, len(word_list), config.matching.batch_size, top_m=0,
                   progress=prog.stage(0.6, 0.85, "pruned matching"), message="pruned matching")
    p_matching = M.label_neurons(acc.state(), word_list, clusters, config.matching)
    records = _records(pruned, tokenizer, spec, limit, config.matching.batch_size)
    prog.stage(0.85, 0.95, "pruned evaluation")(1.0, "pruned evaluation done")
    fractions = {(r["layer"], r["index"]): r for r in pruned_fractions(masks)}
    shift = C.neuron_shift(matching, p_matching, fractions)
    labels_by_neuron = {(lab["layer"], lab["index"]): lab["label"] for lab in matching.labels}
    flips = C.flips(dense_records, records, encoded, matching, p_matching, labels_by_neuron, texts)
    dense_acc, pruned_acc = C.accuracy(dense_records), C.accuracy(records)
    summary["accuracy"] |= {"pruned": pruned_acc, "drop": 100.0 * (dense_acc - pruned_acc),
                            "n_lost": sum(f["direction"] == "lost" for f in flips),
                            "n_gained": sum(f["direction"] == "gained" for f in flips)}
    summary["pruned_neurons"] = {"labelled": len(p_matching.labels),
                                 "labels_surviving": sum(r["label_survives"] for r in shift)}
    top = _with_pruned_activations(top_examples, pruned, p_sites, encoded, config.matching.batch_size)
    del pruned
    return {"neuron_shift": shift, "clusters": C.word_cluster_loss(matching, p_matching), "flips": flips,
            "top_examples": top}


def _with_pruned_activations(top_examples: list[dict], pruned, sites, encoded, batch_size: int) -> list[dict]:
    """The dense top examples with `pruned_activations`: the pruned model's activation of the same neuron at
    the same tokens, for the side-by-side view."""
    from nsa import matching as M

    wanted: dict[int, list[tuple[int, int]]] = {}
    for row in top_examples:
        wanted.setdefault(row["example"], []).append((row["layer"], row["index"]))
    acts = M.token_activations(pruned, sites, {e.index: e for e in encoded}, wanted, batch_size)
    return [row | {"pruned_activations": acts[row["example"], row["layer"], row["index"]]} for row in top_examples]


def _neuron_counts(matching, clusters: list[str]) -> dict:
    per = {c: {"examined": matching.n_neurons, "labelled": 0} for c in clusters}
    for lab in matching.labels:
        per.setdefault(lab["cluster"], {"examined": matching.n_neurons, "labelled": 0})["labelled"] += 1
    return {"examined": matching.n_neurons, "labelled": len(matching.labels), "per_cluster": per}


def _acc(records: list[dict]) -> float | None:
    return sum(bool(r["correct"]) for r in records) / len(records) if records else None


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_outputs(out_dir: str | Path, tables: dict[str, list[dict]], summary: dict) -> None:
    """Every table as `<name>.jsonl` plus summary.json, each written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        write_jsonl(out / f"{name}.jsonl", rows)
    write_json(out / "summary.json", summary)
