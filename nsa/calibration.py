"""Calibration sets: `nsamples` x `seqlen` token windows drawn from a text source with a seed.

Two ways to draw windows, both seeded with `random.seed(seed)` exactly as the pruning papers' code:

- `documents` (the reference's C4 loader, Wanda/SparseGPT `get_c4`): draw a random document until one is
  longer than `seqlen` tokens (tokenised with the tokenizer's defaults, i.e. with BOS for Llama), then a random
  window `[i, i + seqlen)` with `i = random.randint(0, len - seqlen - 1)`. Used for `c4`.
- `stream`: the whole source is one token stream and each window starts at
  `random.randint(0, len - seqlen - 1)`. For `wikitext2` the stream is the reference's
  `tokenizer(" ".join(train_rows))`. For short-text sources (SST-2 sentences, tweets, the demo files, user
  files) every text is tokenised without special tokens and the texts are concatenated with the tokenizer's
  separator (its EOS token; "\\n\\n" when it has none) so that windows are filled with whole texts in order.

Sources: `c4`, `wikitext2`, the demo sources (`demo-generic`, `demo-reviews`), the training (or else
evaluation) text of any registered task (e.g. `sst2` reads sst2/train_sample.jsonl), and a user file
(`path=`, JSONL/CSV with a `text` column or a .txt file, one text per line).

Sets are shared cache entries (`nsa.artifacts.Entry`, kind "calibration": `input_ids.safetensors` +
`calibration.json`, checksummed, no pickles), keyed by (source, the source file's content hash, tokenizer
fingerprint, nsamples, seqlen, seed, strategy); a corrupted entry is rebuilt. Each set reports its token
count and a diversity figure: the mean pairwise cosine distance between TF-IDF vectors of its windows
(terms = token ids), which the follow-up literature relates to pruned-model quality.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from nsa import datasets as D
from nsa.artifacts import Entry, digest, read_json, sha256_file
from nsa.atomic import write_json
from nsa.errors import NSAError
from nsa.userfiles import read_text
from pruners import ProgressEvent

CALIBRATION_FORMAT = 2

STRATEGIES = ("documents", "stream")
MAX_TOKENS = 1 << 24  # 64 x the papers' 128 x 2048: a bigger set is a typo, refused before anything is drawn
_REFERENCE_STRATEGY = {"c4": "documents", "wikitext2": "stream"}


@dataclass
class CalibrationSet:
    """The windows (`input_ids`: LongTensor[nsamples, seqlen]) and what they were made from."""
    input_ids: Any
    source: str
    nsamples: int
    seqlen: int
    seed: int
    strategy: str
    n_tokens: int  # tokens in the set (nsamples * seqlen)
    source_tokens: int  # tokens the windows were drawn from (stream length, or tokens of documents read)
    diversity: float | None  # mean pairwise cosine distance of the windows' TF-IDF vectors (None for 1 row)
    tokenizer: str  # tokenizer fingerprint
    key: str = ""
    path: str | None = None
    cached: bool = False
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """What a run folder's calibration.json holds (everything but the tensor)."""
        out = {k: v for k, v in asdict(self).items() if k != "input_ids"}
        out["shape"] = list(self.input_ids.shape)
        return out


def list_calibration_sources() -> list[str]:
    """Names accepted as `source` (plus any file passed as `path=`)."""
    tasks = [n for n in D.list_tasks() if n not in ("c4", "wikitext2")]
    return ["c4", "wikitext2", *D.CALIBRATION_FILES, *[t for t in tasks if t not in D.CALIBRATION_FILES]]


def build_calibration(source: str, tokenizer, nsamples: int, seqlen: int, seed: int = 0,
                      path: str | Path | None = None, strategy: str | None = None,
                      progress: Callable | None = None, use_cache: bool = True) -> CalibrationSet:
    """Draw (or load from the cache) a calibration set; see the module docstring for the recipe.

    `strategy=None` uses the reference behaviour: `documents` for c4, `stream` for everything else.
    """
    _check_sizes(nsamples, seqlen)
    strategy = strategy or _REFERENCE_STRATEGY.get(source if path is None else "", "stream")
    if strategy not in STRATEGIES:
        raise NSAError(f"unknown calibration strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    texts, origin = _source_texts(source, path)
    fingerprint = tokenizer_fingerprint(tokenizer)
    entry = Entry.keyed("calibration", CALIBRATION_FORMAT, {
        "source": source, "origin": origin, "tokenizer": fingerprint, "nsamples": nsamples, "seqlen": seqlen,
        "seed": seed, "strategy": strategy})
    if use_cache:
        problems = entry.problems()
        if not problems:
            return _load(entry)
        if problems != ["missing"]:
            _emit(progress, 0.0, f"calibration set in the cache is bad ({problems[0]}): rebuilding it")
    _emit(progress, 0.0, f"tokenizing {source}")
    random.seed(seed)
    if strategy == "documents":
        rows, source_tokens = _document_windows(texts, tokenizer, nsamples, seqlen, source, progress)
    else:
        stream = _stream(source, path, texts, tokenizer)
        rows, source_tokens = _stream_windows(stream, nsamples, seqlen, source)
    input_ids = torch.tensor(rows, dtype=torch.long)  # [nsamples, seqlen]
    _emit(progress, 0.9, "measuring diversity")
    calib = CalibrationSet(input_ids=input_ids, source=source, nsamples=nsamples, seqlen=seqlen, seed=seed,
                           strategy=strategy, n_tokens=nsamples * seqlen, source_tokens=source_tokens,
                           diversity=window_diversity(rows), tokenizer=fingerprint, key=entry.key,
                           extra={"origin": origin, "file": _source_path(source, path), "created": time.time()})
    if use_cache:
        _save(entry, calib)
    _emit(progress, 1.0, "calibration set ready")
    return calib


def _check_sizes(nsamples: int, seqlen: int) -> None:
    for name, value in (("nsamples", nsamples), ("seqlen", seqlen)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise NSAError(f"{name} must be a positive integer, got {value!r}")
    if seqlen < 2:
        raise NSAError(f"seqlen must be at least 2 tokens, got {seqlen}")
    check_size(nsamples, seqlen)


def check_size(nsamples: int, seqlen: int) -> None:
    if nsamples * seqlen > MAX_TOKENS:
        raise NSAError(f"{nsamples} x {seqlen} = {nsamples * seqlen:,} calibration tokens is more than this tool "
                       f"takes ({MAX_TOKENS:,}; the pruning papers use 128 x 2048 = 262,144): lower nsamples or "
                       "seqlen", "nsamples")


def _emit(progress: Callable | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(ProgressEvent(fraction=fraction, message=message, stage="calibration"))


# --- sources ------------------------------------------------------------------------------------------
def source_texts(source: str, path: str | Path | None = None) -> list[str]:
    """The texts of a calibration source (a registered source or task, or a file): what its windows are cut from."""
    return _source_texts(source, path)[0]


def _source_texts(source: str, path: str | Path | None) -> tuple[list[str], str]:
    """The source's texts and a string identifying exactly which file (for the cache key)."""
    if path is not None:
        return _file_texts(Path(path)), _file_id(Path(path))
    if source in D.CALIBRATION_FILES and D.CALIBRATION_FILES[source].is_file():
        file = D.CALIBRATION_FILES[source]
        return _file_texts(file), _file_id(file)
    if source in D.CALIBRATION_FILES:
        raise NSAError(f"calibration source {source!r}: {D.CALIBRATION_FILES[source]} does not exist "
                       "(run `python -m nsa demo build`)")
    if source not in D.list_tasks():
        raise NSAError(f"unknown calibration source {source!r}; known: {', '.join(list_calibration_sources())}, "
                       "or pass a file with path=")
    spec = D.get_task(source)
    split = spec.calib_split
    local = D.local_file(spec, split) if split else None
    if split and (local is None or not local.is_file()):
        split = None  # fall back to the evaluation split (local or hub)
    rows = D.load_examples(spec, split=split)
    where = D.local_file(spec, split)
    origin = _file_id(where) if where is not None and where.is_file() else f"hub:{spec.hf_id}:{spec.hf_split}"
    return [D.example_text(spec, r) for r in rows], origin


def _file_texts(path: Path) -> list[str]:
    if not path.is_file():
        raise NSAError(f"calibration file {path} does not exist")
    if path.suffix.lower() == ".txt":
        texts = [line for line in read_text(path, "calibration file").splitlines() if line.strip()]
    else:
        rows = D.read_file(str(path), path.stat().st_mtime_ns, path.stat().st_size)
        missing = [line for line, r in rows if not isinstance(r.get("text"), str)]
        if missing:
            raise NSAError(f"{path}, line {missing[0]}: no 'text' string (calibration files need a text column)")
        texts = [r["text"] for _, r in rows]
    if not texts:
        raise NSAError(f"calibration file {path} is empty (no texts)")
    return texts


def _file_id(path: Path) -> str:
    """What identifies a source file's content: its sha256 (an edited file is a new calibration set)."""
    return f"sha256:{sha256_file(path)}"


def _source_path(source: str, path) -> str | None:
    local = Path(path) if path is not None else source_file(source)
    return str(local) if local is not None else None


def source_file(source: str) -> Path | None:
    """The local file a named calibration source reads (None for hub-only sources)."""
    if source in D.CALIBRATION_FILES:
        return D.CALIBRATION_FILES[source]
    if source not in D.list_tasks():
        return None
    spec = D.get_task(source)
    local = D.local_file(spec, spec.calib_split) if spec.calib_split else None
    if local is None or not local.is_file():
        local = D.local_file(spec)
    return local if local is not None and local.is_file() else None


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's full definition (vocab, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    desc = backend.to_str() if backend is not None else json.dumps(
        [getattr(tokenizer, "name_or_path", ""), len(tokenizer), sorted(tokenizer.get_vocab().items())[:2000]])
    return digest([desc, tokenizer.bos_token_id, tokenizer.eos_token_id, type(tokenizer).__name__], 16)


# --- window drawing -----------------------------------------------------------------------------------
def _document_windows(texts: list[str], tokenizer, nsamples: int, seqlen: int, source: str,
                      progress: Callable | None) -> tuple[list[list[int]], int]:
    """The reference `get_c4` loop: random document longer than seqlen, then a random window in it."""
    encoded: dict[int, list[int]] = {}
    rows: list[list[int]] = []
    draws = 0
    for n in range(nsamples):
        while True:
            i = random.randint(0, len(texts) - 1)
            if i not in encoded:
                encoded[i] = tokenizer(texts[i])["input_ids"]
            draws += 1
            if len(encoded[i]) > seqlen:
                break
            if draws == 20 * len(texts):  # guard against the reference's endless loop
                _require_long_document(texts, tokenizer, seqlen, source)
        ids = encoded[i]
        start = random.randint(0, len(ids) - seqlen - 1)
        rows.append(ids[start:start + seqlen])
        _emit(progress, 0.9 * (n + 1) / nsamples, f"window {n + 1}/{nsamples}")
    return rows, sum(len(v) for v in encoded.values())


def _require_long_document(texts: list[str], tokenizer, seqlen: int, source: str) -> None:
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])
    if longest <= seqlen:
        raise NSAError(f"calibration source {source!r}: no document is longer than seqlen={seqlen} tokens "
                       f"(longest: {longest}); use a smaller seqlen or strategy='stream'")


def _stream(source: str, path, texts: list[str], tokenizer) -> list[int]:
    if source == "wikitext2" and path is None:  # the reference: tokenizer(" ".join(traindata['text']))
        return tokenizer(" ".join(texts))["input_ids"]
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else \
        tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream.extend(ids)
        stream.extend(sep)
    return stream


def _stream_windows(stream: list[int], nsamples: int, seqlen: int, source: str) -> tuple[list[list[int]], int]:
    if len(stream) <= seqlen + 1:
        raise NSAError(f"calibration source {source!r} has only {len(stream)} tokens; windows of seqlen={seqlen} "
                       "need more: use a smaller seqlen or a bigger source")
    rows = []
    for _ in range(nsamples):
        start = random.randint(0, len(stream) - seqlen - 1)
        rows.append(stream[start:start + seqlen])
    return rows, len(stream)


def window_diversity(rows: list[list[int]]) -> float | None:
    """Mean pairwise cosine distance between TF-IDF vectors of the windows (token ids as terms)."""
    if len(rows) < 2:
        return None
    import numpy as np
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectors = TfidfVectorizer(analyzer=lambda ids: [str(t) for t in ids]).fit_transform(rows)
    sim = (vectors @ vectors.T).toarray()  # rows are L2-normalised: this is the cosine similarity
    n = len(rows)
    mean_offdiag = (sim.sum() - np.trace(sim)) / (n * (n - 1))
    return float(1.0 - mean_offdiag)


# --- cache --------------------------------------------------------------------------------------------
def _save(entry: Entry, calib: CalibrationSet) -> None:
    with entry.build() as tmp:
        save_file({"input_ids": calib.input_ids.contiguous()}, str(tmp / "input_ids.safetensors"))
        calib.path = str(entry.path("input_ids.safetensors"))
        write_json(tmp / "calibration.json", calib.summary())


def _load(entry: Entry) -> CalibrationSet:
    meta = read_json(entry.path("calibration.json"))
    meta.pop("shape", None)
    meta["cached"] = True
    return CalibrationSet(input_ids=load_file(str(entry.path("input_ids.safetensors")))["input_ids"], **meta)
