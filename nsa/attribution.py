"""Neuron Semantic Attribution end to end: words -> dense matching -> validation -> dense vs pruned.

The three NSA steps (Ding et al., arXiv 2503.01542; formulas and tests in `nsa.words`, `nsa.matching`,
`nsa.comparison`) plus the causal validation (`nsa.validation`) run in two parts, so a job works from the
state it already has (the dense model before it is pruned in place, then the pruned one; the evaluation
records of the task's example set) and never reloads a model or evaluates the same examples twice:

- `dense_part(model, ...)` on the dense model: word selection, running sums, labels, top examples, validation.
  It depends only on (model, task prompts and rows, words, settings) and is a shared cache entry
  (`nsa.artifacts.Entry`, kind "nsa-dense") reused by every pruned run of the model.
- `pruned_part(model, ...)` on the pruned model (in place): the same prompts, shifts, label survival, cluster
  losses, and the examples whose correctness changed according to the evaluation records.

`attribute` chains them for a single model and masks (the `nsa attribute` command); a job's pipeline calls the
parts itself around its prune stage. Outputs (`nsa.evaluation.write_outputs(out_dir, summary, tables)`, columns
in docs/nsa.md):

  words.jsonl         word, cluster, score, frequency, occurrences
  neuron_labels.jsonl one row per labelled neuron (layer, index, label, cluster, words, selectivity, ...)
  top_examples.jsonl  token activations of labelled neurons on their top examples (dense, and pruned with masks)
  neuron_shift.jsonl  per labelled neuron: dense vs pruned activation on its words, label survival, fractions
  clusters.jsonl      per word and per cluster: activation lost (level = word | cluster)
  flips.jsonl         examples whose correctness changed, with words and neurons that lost most
  summary.json        counts, validation per cluster (the accuracy figures live in the evaluation's comparison)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from safetensors.torch import load_file, save_file

from nsa import comparison as C
from nsa import datasets as D
from nsa import matching as M
from nsa.artifacts import Entry, read_json, read_jsonl
from nsa.atomic import write_json, write_jsonl
from nsa.errors import NSAError
from nsa.evaluation import task_fingerprint, write_outputs
from nsa.masks import apply_masks, check_masks
from nsa.matching import MatchConfig
from nsa.neurons import layer_sizes, neuron_sites, pruned_fractions
from nsa.progress import Stages
from nsa.validation import ValidationConfig, above_chance, validate
from nsa.words import SELECTORS, WordConfig, WordSelection, read_word_file, select_words
from pruners import PruneError
from pruners.options import Option, check_section, resolve_options

DENSE_FORMAT = 6  # 4: shared evaluation records, permutation-tested validation; 5: chance check; 6: top-example
#                  ties to the lower example index, sequential validation
WORDS_FORMAT = 1
BATCH_SIZE = 16

NSA_OPTIONS: tuple[Option, ...] = (  # declared like the pruners' options (one mechanism: CLI, spec, app)
    Option("top_k", int, 20, min=1, help="influential words per class"),
    Option("min_df", int, 3, min=1, help="minimum examples containing a word (learned words)"),
    Option("min_occurrences", int, 10, min=1, help="occurrences a word needs before it is tested"),
    Option("alpha", float, 0.05, min=0.0, max=1.0, exclusive_min=True, exclusive_max=True,
           help="Benjamini-Hochberg false discovery rate of the labelling test"),
    Option("min_selectivity", float, 1.0, min=0.0, help="minimum selectivity (σ) of a labelling word"),
    Option("n_ablate", int, None, min=1,
           help="labelled neurons ablated per cluster (default: 2% of MLP neurons, at least 10)"),
    Option("seeds", int, 20, min=20, help="random-neuron draws of the validation's null distribution (at least 20)"),
    Option("validation", bool, True, help="the ablation check of the labels"),
    Option("sequential", bool, True,
           help="stop a cluster's random draws once its verdict is decided (Besag-Clifford sequential Monte Carlo "
                "p-value; same validated/not verdict as all draws); off: always every draw"),
    Option("label_at_chance", bool, False,
           help="label neurons even when the dense model is not significantly above chance on the task (its "
                "labels would describe a model that does not do the task)"),
)


@dataclass(frozen=True)
class NSAConfig:
    """One NSA setup (a job spec's `nsa:` section), validated on construction: the task is a registered
    classification task, `words` is learned, gradient or a readable word file (stored as its absolute path),
    `limit` is a positive count or None (all examples), `options` are every `NSA_OPTIONS` entry."""

    task: str
    words: str = "learned"
    limit: int | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            spec = D.get_task(self.task)
        except NSAError as err:
            raise NSAError(err.problem, "task") from None
        if spec.kind != "classification":
            raise NSAError(f"NSA needs a labelled classification task; {spec.name!r} is {spec.kind} "
                           f"(classification tasks: {', '.join(D.list_tasks(kind='classification'))})", "task")
        if not isinstance(self.words, str) or not self.words.strip():
            raise NSAError(f"expected learned, gradient or a word file, got {self.words!r}", "words")
        words = self.words.strip()
        if words not in SELECTORS:
            path = Path(words).expanduser()
            if not path.is_file():
                raise NSAError(f"expected learned, gradient or a word file, got {words!r} (no such file)", "words")
            try:
                read_word_file(path)
            except NSAError as err:
                raise NSAError(str(err), "words") from None
            words = str(path.resolve())
        if self.limit is not None and (isinstance(self.limit, bool) or not isinstance(self.limit, int)
                                       or self.limit < 1):
            raise NSAError(f"must be a positive integer or null (all examples), got {self.limit!r}", "limit")
        try:
            options = resolve_options(NSA_OPTIONS, self.options, "NSA")
        except PruneError as err:
            raise NSAError(err.problem, err.field) from None
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "options", options)

    @classmethod
    def from_dict(cls, data: Any) -> "NSAConfig":
        try:
            check_section(data, {"task", "words", "limit", "options"}, "task",
                          "the labelled classification task to attribute, e.g. demo-reviews")
        except PruneError as err:
            raise NSAError(err.problem, err.field) from None
        return cls(task=data["task"], words=data.get("words", "learned"), limit=data.get("limit"),
                   options=data.get("options") or {})

    @classmethod
    def stored(cls, data: dict) -> "NSAConfig":
        """A config this project wrote itself: rebuilt without re-reading files."""
        obj = object.__new__(cls)
        for name in ("task", "words", "limit", "options"):
            object.__setattr__(obj, name, data[name])
        return obj

    def to_dict(self) -> dict:
        return {"task": self.task, "words": self.words, "limit": self.limit, "options": dict(self.options)}

    @property
    def task_spec(self):
        return D.get_task(self.task)

    def with_limit(self, limit: int | None) -> "NSAConfig":
        return NSAConfig.stored(self.to_dict() | {"limit": limit})

    def word_config(self) -> WordConfig:
        return WordConfig(top_k=self.options["top_k"], min_df=self.options["min_df"], batch_size=BATCH_SIZE)

    def match_config(self) -> MatchConfig:
        o = self.options
        return MatchConfig(batch_size=BATCH_SIZE, min_occurrences=o["min_occurrences"], alpha=o["alpha"],
                           min_selectivity=o["min_selectivity"])

    def validation_config(self) -> ValidationConfig:
        return ValidationConfig(n_neurons=self.options["n_ablate"], draws=self.options["seeds"],
                                batch_size=BATCH_SIZE, sequential=self.options["sequential"])


SIGNIFICANCE_NOTE = ("one-sided permutation test of word positions (exact permutation mean/variance of the "
                     "word-occurrence mean over the text tokens, normal approximation), words with fewer than "
                     "min_occurrences not tested, Benjamini-Hochberg FDR alpha over all tested (neuron, word) "
                     "pairs, and selectivity >= min_selectivity")


@dataclass
class NSAInputs:
    """What both parts read: the task, its examples (the evaluation's example set) and their encoded prompts."""

    config: NSAConfig
    spec: Any  # nsa.datasets.TaskSpec
    examples: list[dict]
    texts: dict[int, str]
    selection: WordSelection
    encoded: list
    sites: list
    sizes: list[int]

    @property
    def words(self) -> list[str]:
        return self.selection.words()

    @property
    def clusters(self) -> list[str]:
        cluster_of = self.selection.cluster_of()
        return [cluster_of[w] for w in self.words]


@dataclass
class DenseNSA:
    """The dense part's results (from the cache or just computed)."""

    state: dict
    matching: Any  # nsa.matching.Matching
    top_examples: list[dict]
    validation: dict
    validation_detail: dict
    reused: bool
    entry: Entry
    chance: dict  # nsa.validation.above_chance of the dense records


def prepare(model, tokenizer, config: NSAConfig, model_key: str, stages: Stages, spec=None) -> NSAInputs:
    """Step 1 (word selection; gradient words are cached per model) and the encoded prompts. `spec`: the task as
    the run asks it (its prompt setting); by default the registered task."""
    spec = spec or D.get_task(config.task)
    examples = D.load_examples(spec, limit=config.limit)
    texts = {int(ex["index"]): D.example_text(spec, ex) for ex in examples}
    selection = _select(spec, examples, config, model, tokenizer, model_key, stages.step("words", 0.1))
    sites = neuron_sites(model)
    words = selection.words()
    encoded = M.encode(spec, examples, tokenizer, words, M.context_length(model, tokenizer, None))
    return NSAInputs(config, spec, examples, texts, selection, encoded, sites, layer_sizes(sites))


def _select(spec, examples, config: NSAConfig, model, tokenizer, model_key: str, report) -> WordSelection:
    """Learned and file words are cheap; gradient words (a pass over the model) are a cache entry."""
    if config.words != "gradient":
        return _nonempty(select_words(spec, examples, config.words, config.word_config(), model, tokenizer, report),
                         config.words)
    entry = Entry.keyed("words", WORDS_FORMAT, {"model": model_key, "task": task_fingerprint(spec, config.limit),
                                                 "config": asdict(config.word_config()) | {"batch_size": None}})

    def fill(tmp: Path) -> None:
        selection = _nonempty(select_words(spec, examples, "gradient", config.word_config(), model, tokenizer,
                                           report), "gradient")
        write_json(tmp / "selection.json", asdict(selection))

    reused = entry.complete()
    entry.ensure(fill, log=report.log)
    if reused:
        report(1.0, "gradient words reused from the cache")
    return WordSelection(**read_json(entry.path("selection.json")))


def _nonempty(selection: WordSelection, words: str) -> WordSelection:
    if not selection.rows:
        raise NSAError(f"word selection {words!r} found no influential words (try a smaller min_df or more examples)")
    return selection


def dense_part(model, tokenizer, inputs: NSAInputs, dense_records: list[dict], model_key: str,
               stages: Stages) -> DenseNSA:
    """Running sums, labels, top examples and validation on the dense model: from the cache, or computed once."""
    config, spec = inputs.config, inputs.spec
    match = config.match_config()
    chance = above_chance(dense_records)
    silent = not chance["above_chance"] and not config.options["label_at_chance"]
    entry = Entry.keyed("nsa-dense", DENSE_FORMAT, {
        "model": model_key, "task": task_fingerprint(spec, config.limit), "words": inputs.selection.fingerprint(),
        "matching": match.key(), "validation": asdict(config.validation_config()) | {"batch_size": None},
        "validate": config.options["validation"], "silent": silent})

    def fill(tmp: Path) -> None:
        acc = M.stream(model, inputs.encoded, inputs.sites, inputs.sizes, len(inputs.words), match.batch_size,
                       top_m=match.top_examples, progress=stages.step("dense matching", 0.25))
        state = acc.state()
        matching = _labelled(state, inputs, match, silent)
        top = M.top_examples(model, inputs.sites, inputs.encoded, state, matching.labels, inputs.texts,
                             match.top_example_neurons, match.batch_size)
        if silent:
            validation, detail = {}, {"note": "the dense model is not above chance on this task: nothing labelled, "
                                              "nothing to validate"}
        elif config.options["validation"]:
            validation, detail = validate(model, tokenizer, spec, config.limit, inputs.sites, inputs.sizes,
                                          matching.labels, inputs.selection.clusters, dense_records,
                                          config.validation_config(), stages.step("validation", 0.3))
        else:
            validation, detail = {}, {"note": "validation skipped"}
        save_file(state, str(tmp / "state.safetensors"))
        write_jsonl(tmp / "top_examples.jsonl", top)
        write_json(tmp / "validation.json", {"validation": validation, "validation_detail": detail})

    reused = entry.complete()
    entry.ensure(fill, log=stages.log)
    stages.step("dense matching", 0.55)(1.0, f"dense part {'reused from' if reused else 'written to'} the cache "
                                             f"(nsa-dense/{entry.key})")
    state = load_file(str(entry.path("state.safetensors")))
    saved = read_json(entry.path("validation.json"))
    return DenseNSA(state=state, matching=_labelled(state, inputs, match, silent),
                    top_examples=read_jsonl(entry.path("top_examples.jsonl")), validation=saved["validation"],
                    validation_detail=saved["validation_detail"], reused=reused, entry=entry, chance=chance)


def _labelled(state: dict, inputs: NSAInputs, match, silent: bool):
    """The neuron labels, or none when the dense model does not do the task (`silent`)."""
    matching = M.label_neurons(state, inputs.words, inputs.clusters, match)
    if silent:
        matching.labels = []
    return matching


def pruned_part(model, inputs: NSAInputs, dense: DenseNSA, dense_records: list[dict], pruned_records: list[dict],
                masks: dict, stages: Stages) -> dict[str, list[dict]]:
    """Step 3 on the pruned `model`: the same prompts, shifts, cluster losses, flips (from the records)."""
    match = inputs.config.match_config()
    acc = M.stream(model, inputs.encoded, inputs.sites, inputs.sizes, len(inputs.words), match.batch_size,
                   top_m=0, progress=stages.step("pruned matching", 0.25))
    p_matching = M.label_neurons(acc.state(), inputs.words, inputs.clusters, match)
    fractions = {(r["layer"], r["index"]): r for r in pruned_fractions(masks)}
    shift = C.neuron_shift(dense.matching, p_matching, fractions)
    labels_by_neuron = {(lab["layer"], lab["index"]): lab["label"] for lab in dense.matching.labels}
    flips = C.flips(dense_records, pruned_records, inputs.encoded, dense.matching, p_matching, labels_by_neuron,
                    inputs.texts)
    top = _with_pruned_activations(dense.top_examples, model, inputs.sites, inputs.encoded, match.batch_size)
    return {"neuron_shift": shift, "clusters": C.word_cluster_loss(dense.matching, p_matching), "flips": flips,
            "top_examples": top, "pruned_labels": p_matching.labels}


def summary_of(inputs: NSAInputs, dense: DenseNSA, model_id: str, model_key: str, pruned: dict | None) -> dict:
    """summary.json: what was attributed, how many neurons got labels, and the validation verdicts."""
    match = inputs.config.match_config()
    out: dict[str, Any] = {
        "task": inputs.spec.name, "model": model_id, "model_key": model_key, "limit": inputs.config.limit,
        "n_examples": len(inputs.examples),
        "words": {"method": inputs.selection.method, "n_words": len(inputs.words),
                  "clusters": inputs.selection.clusters, **inputs.selection.details},
        "neurons": _neuron_counts(dense.matching, inputs.selection.clusters),
        "validation": dense.validation, "validation_detail": dense.validation_detail,
        "matching": asdict(match) | {"n_tokens": dense.matching.n_tokens, "test": SIGNIFICANCE_NOTE},
        "dense_cache": dense.entry.key, "dense_vs_chance": dense.chance,
        "accuracy_source": "eval/comparison.json (the evaluation of this example set)",
    }
    if pruned is not None:
        shift = pruned["neuron_shift"]
        removed = [r for r in shift if r["removed"]]
        out["pruned_neurons"] = {"labelled": len(pruned["pruned_labels"]),
                                 "labels_surviving": sum(r["label_survives"] for r in shift),
                                 # dense-labelled neurons the pruning removed whole (each listed in neuron_shift)
                                 "labelled_removed": len(removed),
                                 # every cluster a label carries ("mixed" too), so the counts add up to the total
                                 "labelled_removed_per_cluster": {c: sum(r["cluster"] == c for r in removed)
                                                                  for c in sorted({r["cluster"] for r in shift})}}
    return out


def tables_of(inputs: NSAInputs, dense: DenseNSA, pruned: dict | None) -> dict[str, list[dict]]:
    tables = {"words": inputs.selection.rows, "neuron_labels": dense.matching.labels,
              "top_examples": dense.top_examples}
    if pruned is not None:
        tables |= {k: v for k, v in pruned.items() if k != "pruned_labels"}
    return tables


def attribute(model, tokenizer, config: NSAConfig, model_id: str, model_key: str, dense_records: list[dict],
              masks: dict | None = None, weights: dict | None = None,
              pruned_records: Callable[[], list[dict]] | None = None, out_dir: str | Path | None = None,
              progress: Callable | None = None, spec=None) -> dict:
    """NSA of the dense `model` and, with `masks`, of its pruned version (`model` is pruned in place after the
    dense part). `dense_records` are the evaluation records of the task's example set; `pruned_records()`
    evaluates the pruned model on it; `spec`: the task as asked (prompt setting). Returns the summary (also
    written to `out_dir`)."""
    stages = Stages(progress, "nsa")
    if masks is not None:
        check_masks(model, masks)
    inputs = prepare(model, tokenizer, config, model_key, stages, spec)
    dense = dense_part(model, tokenizer, inputs, dense_records, model_key, stages)
    pruned = None
    if masks is not None:
        apply_masks(model, masks, weights)
        pruned = pruned_part(model, inputs, dense, dense_records, pruned_records(), masks, stages)
    summary = summary_of(inputs, dense, model_id, model_key, pruned)
    if out_dir is not None:
        write_outputs(out_dir, summary, tables_of(inputs, dense, pruned))
    stages.parent(1.0, "attribution done")
    return summary


def _with_pruned_activations(top_examples: list[dict], pruned, sites, encoded, batch_size: int) -> list[dict]:
    """The dense top examples with `pruned_activations`: the pruned model's activation of the same neuron at
    the same tokens, for the side-by-side view."""
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

