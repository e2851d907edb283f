"""NSA step 1: influential words of a labelled task (learned, gradient-based, or user-given).

A *word* is a lowercased run of letters/digits, optionally joined by apostrophes or hyphens inside it
(`word_spans`); the same function splits texts here and locates word occurrences in prompts in step 2, so
the two steps can never disagree on what a word is. Selection reads the example text only (`example_text`:
the task's text fields, not the prompt template), so template words ("positive", "negative" in the sentiment
question) are never counted as evidence.

Methods (registry `SELECTORS`, chosen by `select_words(..., method=...)`):

- `learned` (default): scikit-learn `LogisticRegressionCV` (L2, lbfgs) on a binary bag-of-words of the task
  texts; the inverse regularisation C is chosen by stratified k-fold cross-validation (k = min(5, smallest
  class)) over a log grid; words below a minimum document frequency are dropped before fitting. For two
  classes the coefficient's sign picks the class (positive -> class 1, negative -> class 0, score = |coef|);
  for more classes each class's one-vs-rest coefficient vector is used. Top-K words per class by score.
- `gradient`: gradient x input (on the input embeddings) of the dense model's gold-label log-likelihood
  margin, ll(gold choice) - mean ll(other choices), on the evaluator's prompt (`prompt_for` + each choice).
  A word occurrence's attribution is the sum over its tokens of (grad . embedding); per class the word's
  score is the mean attribution over its occurrences in examples of that class (positive = the word pushes
  the model toward the right answer of its class). Each word goes to the class where it scores highest;
  top-K per class with the same minimum document frequency.
- user file (JSON `{"cluster": ["w", ...]}`, JSON list of `{"word", "cluster"[, "score"]}`, or CSV with
  columns `word,cluster[,score]`): the paper's LLM-made clusters, or the user's edits from the app.

Every method returns `WordSelection.rows`: dicts `word, cluster, score, frequency` (documents containing
the word) and `occurrences` (total count).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nsa import datasets as D
from nsa.errors import NSAError
from nsa.neurons import text_regions, tokens_of_words
from nsa.userfiles import read_text
from pruners import ProgressEvent

WORD_RE = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*")


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """(lowercased word, start, end) for each word of `text`, character offsets into `text`."""
    return [(m.group(0).lower(), m.start(), m.end()) for m in WORD_RE.finditer(text)]


def words_of(text: str) -> list[str]:
    return [w for w, _, _ in word_spans(text)]


@dataclass
class WordConfig:
    """How step 1 picks words. `top_k` per class; `min_df` = minimum number of documents with the word."""
    top_k: int = 20
    min_df: int = 3
    cv_folds: int = 5
    Cs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
    seed: int = 0
    batch_size: int = 8  # gradient method
    device: str | None = None


@dataclass
class WordSelection:
    """The influential words: one row per word (word, cluster, score, frequency, occurrences)."""
    method: str
    rows: list[dict]
    clusters: list[str]
    details: dict = field(default_factory=dict)

    def words(self) -> list[str]:
        return [r["word"] for r in self.rows]

    def cluster_of(self) -> dict[str, str]:
        return {r["word"]: r["cluster"] for r in self.rows}

    def fingerprint(self) -> str:
        blob = json.dumps([self.method, [(r["word"], r["cluster"]) for r in self.rows]], sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


# --- shared helpers ---------------------------------------------------------------------------------------
def document_counts(texts: list[str]) -> tuple[Counter, Counter]:
    """(documents containing each word, total occurrences of each word)."""
    df, tf = Counter(), Counter()
    for text in texts:
        ws = words_of(text)
        tf.update(ws)
        df.update(set(ws))
    return df, tf


def _labels_and_names(labels: list[int], label_names: list[str] | tuple[str, ...]) -> list[str]:
    present = sorted(set(labels))
    if len(present) < 2:
        name = label_names[present[0]] if present and present[0] < len(label_names) else present
        raise NSAError(f"influential words need a labelled dataset with at least two classes; every example "
                       f"has label {name!r}. Use more examples (a larger --limit) or another task, or give a "
                       f"word list file (--words FILE)")
    return [label_names[i] if i < len(label_names) else str(i) for i in range(max(present) + 1)]


def _row(word: str, cluster: str, score: float, df: Counter, tf: Counter) -> dict:
    return {"word": word, "cluster": cluster, "score": float(score), "frequency": int(df[word]),
            "occurrences": int(tf[word])}


# --- learned ----------------------------------------------------------------------------------------------
def learned_words(texts: list[str], labels: list[int], label_names, config: WordConfig) -> WordSelection:
    """Top-K words per class by logistic-regression coefficient (C chosen by stratified CV)."""
    import numpy as np
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold

    names = _labels_and_names(labels, label_names)
    counts = Counter(labels)
    smallest = min(counts.values())
    if smallest < 2:
        raise NSAError(f"class {names[min(counts, key=counts.get)]!r} has a single example; cross-validation "
                       f"needs at least two per class (use a larger --limit)")
    vectorizer = CountVectorizer(analyzer=words_of, min_df=config.min_df, binary=True)
    try:
        x = vectorizer.fit_transform(texts)
    except ValueError:
        raise NSAError(f"no word occurs in at least min_df={config.min_df} documents; lower min_df or use "
                       f"more examples") from None
    vocab = np.array(vectorizer.get_feature_names_out())
    folds = StratifiedKFold(n_splits=min(config.cv_folds, smallest), shuffle=True, random_state=config.seed)
    clf = LogisticRegressionCV(Cs=list(config.Cs), cv=folds, max_iter=2000, scoring="neg_log_loss",
                               l1_ratios=(0.0,), use_legacy_attributes=False)
    clf.fit(x, np.asarray(labels))
    df, tf = document_counts(texts)
    classes = [int(c) for c in clf.classes_]
    rows: list[dict] = []
    if len(classes) == 2:
        coef = clf.coef_[0]
        for cls, sign in ((classes[1], 1.0), (classes[0], -1.0)):
            order = np.argsort(-sign * coef)[: config.top_k]
            rows += [_row(vocab[j], names[cls], sign * coef[j], df, tf) for j in order if sign * coef[j] > 0]
    else:
        for k, cls in enumerate(classes):
            order = np.argsort(-clf.coef_[k])[: config.top_k]
            rows += [_row(vocab[j], names[cls], clf.coef_[k][j], df, tf) for j in order if clf.coef_[k][j] > 0]
    rows = _dedupe(rows)
    cv_loss = -float(np.max(np.asarray(clf.scores_).reshape(folds.n_splits, -1).mean(axis=0)))
    return WordSelection("learned", rows, [names[c] for c in classes],
                         {"C": float(np.ravel(clf.C_)[0]), "cv_log_loss": cv_loss, "vocabulary": int(len(vocab)),
                          "min_df": config.min_df, "top_k": config.top_k, "n_documents": len(texts)})


def _dedupe(rows: list[dict]) -> list[dict]:
    """A word belongs to one cluster: keep its highest-scoring row."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["word"] not in best or r["score"] > best[r["word"]]["score"]:
            best[r["word"]] = r
    return [r for r in rows if best[r["word"]] is r]


# --- gradient x input -------------------------------------------------------------------------------------
def gradient_words(model, tokenizer, spec, examples: list[dict], config: WordConfig,
                   progress: Callable | None = None) -> WordSelection:
    """Top-K words per class by mean gradient x input of the gold-label log-likelihood margin."""
    labels = [D.gold_for(spec, ex) for ex in examples]
    names = _labels_and_names(labels, spec.label_names or [])
    texts = [D.example_text(spec, ex) for ex in examples]
    df, tf = document_counts(texts)
    sums: dict[tuple[str, int], float] = Counter()
    occ: dict[tuple[str, int], int] = Counter()
    for i, ex in enumerate(examples):
        attr, _margin, prompt, offsets = example_attribution(model, tokenizer, spec, ex)
        gold = labels[i]
        for word, _start, _end, toks in _word_tokens(prompt, offsets, text_regions(spec, ex, prompt)):
            sums[(word, gold)] += sum(attr[t] for t in toks)
            occ[(word, gold)] += 1
        if progress is not None:
            progress(ProgressEvent((i + 1) / len(examples), f"gradient x input {i + 1}/{len(examples)}", "words"))
    rows = []
    for cls in sorted(set(labels)):
        scored = [(sums[(w, c)] / occ[(w, c)], w) for (w, c) in occ if c == cls and df[w] >= config.min_df]
        scored.sort(reverse=True)
        rows += [_row(w, names[cls], s, df, tf) for s, w in scored[: config.top_k] if s > 0]
    rows = _dedupe(rows)
    return WordSelection("gradient", rows, [names[c] for c in sorted(set(labels))],
                         {"min_df": config.min_df, "top_k": config.top_k, "n_documents": len(texts),
                          "margin": "ll(gold) - mean ll(others)"})


def example_attribution(model, tokenizer, spec, example: dict, scale: dict[int, float] | None = None):
    """(grad x input per prompt token, margin, prompt, offsets) for one example.

    margin = ll(gold choice | prompt) - mean ll(other choices | prompt), each continuation's token
    log-probabilities summed, prompt encoded as lm-evaluation-harness 0.4.13 encodes it (the tokenizer's default
    special tokens, e.g. BOS; continuation = encode(prompt + choice)[len(encode(prompt)):]; left-truncated). `scale` ({token position: factor}) multiplies input embeddings (used to check the
    first-order property d margin / d factor = attribution in the tests).
    """
    import torch


    device = next(model.parameters()).device
    embed = model.get_input_embeddings()
    max_len = getattr(model.config, "max_position_embeddings", None) or 10**9
    prompt = D.prompt_for(spec, example)
    enc = tokenizer(prompt, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # continuation tokens as lm-eval's encode_pair cuts them: encode(context + choice)[len(encode(context)):]
    conts = [tokenizer(prompt + c)["input_ids"][len(ids):]
             for c in D.choices_for(spec, example)]
    keep = max(0, len(ids) + max(len(c) for c in conts) - max_len)  # left-truncate as the harness does
    ids, offsets = ids[keep:], offsets[keep:]
    emb = embed(torch.tensor([ids], device=device)).detach()  # [1, T, H]
    if scale:
        factors = torch.ones(emb.shape[1], 1, device=device)
        for t, f in scale.items():
            factors[t] = f
        emb = emb * factors
    emb.requires_grad_(True)
    lls = []
    for cont in conts:
        full = torch.cat([emb, embed(torch.tensor([cont], device=device)).detach()], dim=1)
        logp = torch.log_softmax(model(inputs_embeds=full, use_cache=False).logits[0, :-1].float(), dim=-1)
        lls.append(logp[len(ids) - 1:].gather(1, torch.tensor(cont, device=device)[:, None]).sum())
    gold = D.gold_for(spec, example)
    margin = lls[gold] - torch.stack([ll for k, ll in enumerate(lls) if k != gold]).mean()
    (grad,) = torch.autograd.grad(margin, emb)
    attr = (grad * emb).sum(-1)[0].detach().cpu().tolist()  # [T]
    return attr, float(margin.detach()), prompt, offsets


def _word_tokens(prompt: str, offsets, regions: list[tuple[int, int]]):
    """(word, start, end, token positions) for each word inside `regions` of the prompt."""
    for region_start, region_end in regions:
        spans = [(w, s + region_start, e + region_start) for w, s, e in word_spans(prompt[region_start:region_end])]
        for (w, s, e), toks in zip(spans, tokens_of_words(offsets, spans)):
            if toks:
                yield w, s, e, toks


# --- user lists -------------------------------------------------------------------------------------------
def read_word_file(path: str | Path) -> list[dict]:
    """Rows {word, cluster, score?} from a JSON or CSV word/cluster file (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise NSAError(f"word file {path} does not exist (give learned, gradient, or a JSON/CSV word file)")
    text = read_text(path, "word file")
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames or "word" not in reader.fieldnames:
            raise NSAError(f"{path}: a CSV word file needs a header with columns word,cluster[,score]; "
                           f"found {reader.fieldnames}")
        items = [dict(r) for r in reader]
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise NSAError(f"{path}: not valid JSON ({err}); expected {{\"cluster\": [\"word\", ...]}} or "
                           f"[{{\"word\": ..., \"cluster\": ...}}]") from None
        if isinstance(data, dict):
            if not all(isinstance(v, list) for v in data.values()):
                raise NSAError(f"{path}: a JSON object must map each cluster name to a list of words")
            items = [{"word": w, "cluster": c} for c, ws in data.items() for w in ws]
        elif isinstance(data, list) and all(isinstance(r, dict) and "word" in r for r in data):
            items = data
        else:
            raise NSAError(f"{path}: expected {{\"cluster\": [\"word\", ...]}} or a list of "
                           f"{{\"word\", \"cluster\"}} objects")
    rows = []
    for k, item in enumerate(items):
        word = str(item.get("word", "")).strip().lower()
        if words_of(word) != [word]:
            raise NSAError(f"{path}: entry {k + 1} {item.get('word')!r} is not a single word (letters/digits, "
                           f"inner ' or -); put one word per entry")
        score = item.get("score")
        rows.append({"word": word, "cluster": str(item.get("cluster") or "words"),
                     "score": float(score) if score not in (None, "") else 1.0})
    if not rows:
        raise NSAError(f"{path}: the word file lists no words")
    return _dedupe(rows)


def user_words(path: str | Path, texts: list[str]) -> WordSelection:
    """A user word/cluster file, checked against the texts: every word must occur at least once."""
    rows = read_word_file(path)
    df, tf = document_counts(texts)
    missing = [r["word"] for r in rows if tf[r["word"]] == 0]
    if missing:
        raise NSAError(f"{len(missing)} of {len(rows)} words in {path} never occur in the task's "
                       f"{len(texts)} examples: {', '.join(missing[:30])}{' ...' if len(missing) > 30 else ''}. "
                       f"Remove them (or use more examples / another task)")
    rows = [{**r, "frequency": int(df[r["word"]]), "occurrences": int(tf[r["word"]])} for r in rows]
    clusters = list(dict.fromkeys(r["cluster"] for r in rows))
    return WordSelection(f"file:{Path(path).name}", rows, clusters, {"path": str(path)})


# --- entry point ------------------------------------------------------------------------------------------
SELECTORS = ("learned", "gradient")


def select_words(spec, examples: list[dict], method: str = "learned", config: WordConfig | None = None,
                 model=None, tokenizer=None, progress: Callable | None = None) -> WordSelection:
    """Step 1 for `examples` of task `spec`: `method` is learned, gradient, or a path to a word file."""
    config = config or WordConfig()
    spec = D.get_task(spec)
    if spec.kind != "classification" and method in SELECTORS:
        raise NSAError(f"task {spec.name!r} is {spec.kind}; learned/gradient words need a classification task "
                       f"(give a word file instead)")
    texts = [D.example_text(spec, ex) for ex in examples]
    if method == "learned":
        return learned_words(texts, [D.gold_for(spec, ex) for ex in examples], spec.label_names, config)
    if method == "gradient":
        if model is None or tokenizer is None:
            raise NSAError("gradient word selection needs the dense model and its tokenizer")
        return gradient_words(model, tokenizer, spec, examples, config, progress)
    if Path(method).suffix.lower() in (".json", ".csv") or Path(method).exists():
        return user_words(method, texts)
    raise NSAError(f"unknown word selection {method!r}: use learned, gradient, or a .json/.csv word file")
