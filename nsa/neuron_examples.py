"""Top-activating examples of any MLP neuron, on demand, dense and pruned side by side.

A run stores top examples only for its most selective labelled neurons (`nsa/top_examples.jsonl`). For any
other neuron this module reads the neuron on two sets of texts:

- **task**: the prompts of the run's NSA task (its first `n_task` examples; NSA labelled from the first `limit`), with the
  activation at every token of the example's own text (template tokens excluded, as in NSA's matching);
- **general**: the run's calibration source (wikitext2 when the run has none): its first `n_general` texts of at
  least 100 characters, cut to `general_tokens` tokens, every token.

Both models are read in one call: the loaded (dense) model through a forward-pre-hook on the layer's down
projection (`nsa.neurons.capture`; the forward stops after that layer), then the same model with the run's masks
applied for the block (`nsa.masks.masks_applied`, only the parameters of layers up to the neuron's). The result
(per source: the top `top` examples by dense maximum and by pruned maximum with token strings and both
activations, every example's maxima; a dense-vs-pruned histogram of all token activations) is a shared cache
entry of kind `neuron-examples`, keyed by the run, its masks' sha256, the neuron and the settings, stored as JSON.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from nsa import datasets as D
from nsa import matching as M
from nsa.artifacts import Entry, read_json
from nsa.atomic import write_json
from nsa.calibration import source_texts
from nsa.jobs.runs import artifact_sha, run_artifact
from nsa.logit_lens import check_neuron
from nsa.masks import load_masks, load_weights, masks_applied
from nsa.neurons import capture, neuron_sites
from pruners import ProgressEvent

FORMAT = 1
GENERAL_DEFAULT = "wikitext2"
MIN_CHARS = 100
_LAYER = re.compile(r"\.(?:layers|h|layer)\.(\d+)\.")


@dataclass(frozen=True)
class ExampleSettings:
    n_task: int = 20  # sized for one SmolLM2-135M neuron in a few CPU seconds (bench/bench_neurons.py)
    n_general: int = 12
    general_tokens: int = 48
    top: int = 5
    bins: int = 40
    batch_size: int = 16


@dataclass
class RunInputs:
    """What reading a run's neurons needs besides the model: its spec, masks and (optional) updated weights."""

    run_id: str
    spec: dict
    masks: dict
    weights: dict | None

    @property
    def model(self) -> str:
        return self.spec["model"]


def run_inputs(run_id: str) -> RunInputs:
    """The run's verified spec, masks and weights (`ArtifactError` for an unknown run or a bad artifact)."""
    spec = read_json(run_artifact(run_id, "spec.json"))
    masks = load_masks(run_artifact(run_id, "masks.safetensors"))
    weights_path = run_artifact(run_id, "weights.safetensors", required=False)
    return RunInputs(run_id, spec, masks, load_weights(weights_path))


def task_spec(spec: dict, tokenizer):
    """The run's NSA task as the run asked it (its prompt setting), or None for a run without NSA."""
    nsa = spec.get("nsa")
    if not nsa:
        return None
    return D.prompted(nsa["task"], D.PromptConfig.from_dict(spec.get("prompt")), tokenizer, nsa.get("limit"))


def task_texts(spec: dict, tokenizer, model, n: int, skip: int = 0) -> list[M.Encoded]:
    """The run's NSA task prompts, examples skip..skip+n-1, with their text-token positions ([] without NSA)."""
    task = task_spec(spec, tokenizer)
    if task is None or n <= 0:
        return []
    examples = D.load_examples(task, limit=skip + n)[skip:]
    return M.encode(task, examples, tokenizer, [], M.context_length(model, tokenizer, None))


def general_source(spec: dict) -> tuple[str, str | None]:
    calib = spec.get("calibration") or {}
    return (calib["source"], calib.get("path")) if calib.get("source") else (GENERAL_DEFAULT, None)


def general_texts(spec: dict, tokenizer, n: int, max_tokens: int) -> list[M.Encoded]:
    """The first `n` texts of at least MIN_CHARS characters of the run's calibration source, cut to `max_tokens`."""
    source, path = general_source(spec)
    texts = [t for t in source_texts(source, path) if len(t.strip()) >= MIN_CHARS][:n]
    out = []
    for i, text in enumerate(texts):
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False, truncation=True,
                        max_length=max_tokens)
        ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
        text = text[:offsets[-1][1]] if offsets else ""
        positions = [t for t, (s, e) in enumerate(offsets) if e > s]
        out.append(M.Encoded(i, ids, offsets, text, positions, []))
    return [e for e in out if e.text_positions]


class _Stop(Exception):
    """Raised by the hook once the neuron's layer is read: later layers need not run."""


def neuron_activations(model, layer: int, index: int, encoded: list[M.Encoded], batch_size: int = 16,
                       progress: Callable[[int], None] | None = None) -> list[np.ndarray]:
    """The neuron's activation at each text position of each encoded text, in the given order (the forward stops
    after `layer`; texts are batched by length, as NSA's passes are, so a batch pads to a few tokens)."""
    sites = neuron_sites(model)
    device = next(model.parameters()).device
    out: dict[int, np.ndarray] = {}
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i].ids))  # longest first, as M.by_length
    for start in range(0, len(order), batch_size):
        slots = order[start:start + batch_size]
        batch = [encoded[i] for i in slots]
        ids, att = M.padded(batch, device)
        got = {}

        def read(pos: int, acts, _got=got) -> None:
            if pos == layer:
                _got["acts"] = acts[..., index].float().cpu()
                raise _Stop

        try:
            with torch.no_grad(), capture(sites[:layer + 1], read):
                model.base_model(input_ids=ids, attention_mask=att, use_cache=False)
        except _Stop:
            pass
        out.update({i: got["acts"][b, encoded[i].text_positions].numpy() for b, i in enumerate(slots)})
        if progress is not None:
            progress(len(batch))
    return [out[i] for i in range(len(encoded))]


def _layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def up_to_layer(layer: int) -> Callable[[str], bool]:
    """Parameters that can change layer `layer`'s MLP input: those of decoder layers 0..layer."""
    return lambda name: (_layer_of(name) is not None and _layer_of(name) <= layer)


def _example(e: M.Encoded, dense: np.ndarray, pruned: np.ndarray) -> dict:
    return {"example": e.index, "tokens": [e.prompt[e.offsets[t][0]:e.offsets[t][1]] for t in e.text_positions],
            "dense": [round(float(a), 4) for a in dense], "pruned": [round(float(a), 4) for a in pruned],
            "max_dense": float(dense.max()), "max_pruned": float(pruned.max())}


def summarise(encoded: list[M.Encoded], dense: list[np.ndarray], pruned: list[np.ndarray], top: int) -> dict:
    """Per source: every example's maxima and its top examples by dense and by pruned maximum."""
    if not encoded:
        return {"n": 0, "max_dense": [], "max_pruned": [], "top_dense": [], "top_pruned": []}
    max_d = np.array([d.max() for d in dense])
    max_p = np.array([p.max() for p in pruned])
    pick = lambda values: [_example(encoded[i], dense[i], pruned[i]) for i in np.argsort(-values)[:top]]  # noqa: E731
    return {"n": len(encoded), "max_dense": [round(float(v), 4) for v in max_d],
            "max_pruned": [round(float(v), 4) for v in max_p], "top_dense": pick(max_d), "top_pruned": pick(max_p)}


def histogram(dense: list[np.ndarray], pruned: list[np.ndarray], bins: int) -> dict:
    """Counts of all token activations, dense and pruned, on shared bin edges."""
    d = np.concatenate(dense) if dense else np.zeros(0)
    p = np.concatenate(pruned) if pruned else np.zeros(0)
    both = np.concatenate([d, p])
    lo, hi = (float(both.min()), float(both.max())) if both.size else (0.0, 1.0)
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
    return {"edges": edges.tolist(), "dense": np.histogram(d, edges)[0].tolist(),
            "pruned": np.histogram(p, edges)[0].tolist(), "n_tokens": int(d.size)}


def compute(model, tokenizer, run: RunInputs, layer: int, index: int, settings: ExampleSettings = ExampleSettings(),
            progress: Callable | None = None) -> dict:
    """The neuron's examples on the task prompts and general text, dense and pruned (see the module docstring)."""
    check_neuron(model, layer, index)
    sources = {"task": task_texts(run.spec, tokenizer, model, settings.n_task),
               "general": general_texts(run.spec, tokenizer, settings.n_general, settings.general_tokens)}
    order = [e for texts in sources.values() for e in texts]
    total, done = 2 * len(order), [0]

    def step(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(ProgressEvent(done[0] / max(total, 1), f"{done[0]}/{total} texts (dense, then pruned)",
                                   "neuron examples"))

    dense = neuron_activations(model, layer, index, order, settings.batch_size, step)
    with masks_applied(model, run.masks, run.weights, only=up_to_layer(layer)):
        pruned = neuron_activations(model, layer, index, order, settings.batch_size, step)
    out, at = {"layer": int(layer), "index": int(index), "settings": asdict(settings), "sources": {}}, 0
    for name, texts in sources.items():
        part = slice(at, at + len(texts))
        out["sources"][name] = summarise(texts, dense[part], pruned[part], settings.top)
        at += len(texts)
    task = task_spec(run.spec, tokenizer)
    out["sources"]["task"]["name"] = task.name if task is not None else None
    out["sources"]["general"]["name"] = general_source(run.spec)[0]
    out["histogram"] = histogram(dense, pruned, settings.bins)
    return out


def entry(run_id: str, layer: int, index: int, settings: ExampleSettings = ExampleSettings()) -> Entry:
    """The cache entry of one neuron's examples (kind `neuron-examples`)."""
    return Entry.keyed("neuron-examples", FORMAT, {
        "run": run_id, "masks": artifact_sha(run_id, "masks.safetensors"), "layer": int(layer), "index": int(index),
        "settings": asdict(settings) | {"batch_size": None}})


def stored(run_id: str, layer: int, index: int, settings: ExampleSettings = ExampleSettings()) -> dict | None:
    """The cached examples of the neuron, or None when not computed yet (or the entry fails verification)."""
    e = entry(run_id, layer, index, settings)
    return read_json(e.path("examples.json")) if e.complete() else None


def examples(model, tokenizer, run: RunInputs, layer: int, index: int, settings: ExampleSettings = ExampleSettings(),
             progress: Callable | None = None) -> dict:
    """The neuron's examples from the cache, computed and stored once (atomically) when missing."""
    check_neuron(model, layer, index)
    e = entry(run.run_id, layer, index, settings)

    def fill(tmp: Path) -> None:
        write_json(tmp / "examples.json", compute(model, tokenizer, run, layer, index, settings, progress))

    e.ensure(fill)
    return read_json(e.path("examples.json"))
