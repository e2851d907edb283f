"""`demo build`: generate the corpus, train the tokenizer and the model, write `nsa/demo/model/` and
`nsa/demo/data/` (atomically), with `build_info.json` recording seed, steps, time and data hashes."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nsa.artifacts import sha256_file
from nsa.atomic import atomic_dir, write_jsonl, write_text
from nsa.demo.corpus import demo_data, facts_test, training_documents
from nsa.demo.score import sentiment_accuracy
from nsa.demo.tokenizer import train_tokenizer
from nsa.demo.train import ModelShape, TrainConfig, build_model, pack, train
from nsa.errors import NSAError

DATA_FILES = ("reviews_test", "unseen_test", "generic_calib", "reviews_calib", "facts_test")


@dataclass(frozen=True)
class BuildConfig:
    seed: int = 0
    n_docs: int = 40_000
    vocab_size: int = 2048
    threads: int = 1
    prompted_share: float = 0.8  # share of training documents that are prompted reviews (with the answer)
    bare_share: float = 0.05  # share of bare reviews (no prompt); the rest is generic text
    # Probability that a sentiment phrase is a negated opposite ("not good"): in training reviews, and in the
    # held-out test and calibration reviews. The test mix is harder on purpose: negation is the compositional
    # part of the task, and the part pruning breaks first (docs/demo.md, "Design history").
    negation: float = 0.15
    test_negation: float = 0.4
    shape: ModelShape = field(default_factory=ModelShape)
    train: TrainConfig = field(default_factory=TrainConfig)


def write_data(data_dir: Path, cfg: BuildConfig) -> dict[str, str]:
    """Write every data file (the same rows `build` trains around) and return their SHA-256s.

    The data depend only on the seed and the test negation share, not on the model, so `demo build
    --data-only` can add a data file (e.g. facts_test, task demo-facts) without retraining; the existing
    files come out byte-identical.
    """
    data = demo_data(cfg.seed, negation=cfg.test_negation)
    rows = {**{n: getattr(data, n) for n in DATA_FILES if n != "facts_test"}, "facts_test": facts_test(cfg.seed)}
    for name in DATA_FILES:
        write_jsonl(data_dir / f"{name}.jsonl", rows[name])
    return {n: sha256_file(data_dir / f"{n}.jsonl") for n in DATA_FILES}


def build_data_only(model_dir: Path, data_dir: Path, cfg: BuildConfig) -> dict:
    """Rewrite the data files for an existing model and record their hashes in its build_info.json.

    Refuses when the model was built with another seed or test negation share (its held-out reviews would
    not be the ones written)."""
    path = model_dir / "build_info.json"
    if not path.is_file():
        raise NSAError(f"{path} is missing: --data-only needs a built model; run `python -m nsa demo build`")
    info = json.loads(path.read_text())
    for key, value in (("seed", cfg.seed), ("test_negation", cfg.test_negation)):
        if info.get(key) != value:
            raise NSAError(f"the model in {model_dir} was built with {key} {info.get(key)}, not {value}; "
                           "pass the same --seed or rebuild everything")
    info["data_sha256"] = write_data(data_dir, cfg)
    write_text(path, json.dumps(info, indent=1) + "\n")
    return info


def build(model_dir: Path, data_dir: Path, cfg: BuildConfig,
          progress: Callable[[int, float], None] | None = None) -> dict:
    """Build everything; returns the build info (also written to model_dir/build_info.json)."""
    import torch


    for name in ("negation", "test_negation"):
        if not 0 <= getattr(cfg, name) <= 0.6:
            raise ValueError(f"{name} must be in [0, 0.6] (the rest are intensified or plain), "
                             f"got {getattr(cfg, name)}")
    t0 = time.time()
    torch.set_num_threads(cfg.threads)
    data = demo_data(cfg.seed, negation=cfg.test_negation)
    exclude = {r["text"] for r in data.reviews_test}
    docs = training_documents(cfg.seed, cfg.n_docs, exclude, cfg.prompted_share, cfg.bare_share,
                              cfg.negation)
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    stream = pack(docs, tokenizer)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.shape, tokenizer)
    train_cfg = TrainConfig(**{**asdict(cfg.train), "seed": cfg.seed})
    answer_ids = tuple(tokenizer(a, add_special_tokens=False)["input_ids"][0] for a in (" negative", " positive"))
    losses = train(model, stream, train_cfg, progress, answer_ids)
    acc = {"demo-reviews": sentiment_accuracy(model, tokenizer, data.reviews_test),
           "demo-unseen": sentiment_accuracy(model, tokenizer, data.unseen_test)}
    data_sha256 = write_data(data_dir, cfg)
    info = {"seed": cfg.seed, "steps": train_cfg.steps, "batch_size": train_cfg.batch_size,
            "seq_len": train_cfg.seq_len, "threads": cfg.threads, "n_docs": cfg.n_docs,
            "prompted_share": cfg.prompted_share, "bare_share": cfg.bare_share, "negation": cfg.negation,
            "test_negation": cfg.test_negation, "lr": train_cfg.lr,
            "answer_weight": train_cfg.answer_weight, "weight_decay": train_cfg.weight_decay,
            "train_tokens": int(stream.numel()), "parameters": sum(p.numel() for p in model.parameters()),
            "final_loss": sum(losses[-10:]) / len(losses[-10:]), "first_loss": losses[0],
            "dense_accuracy": acc, "build_seconds": round(time.time() - t0, 1),
            "torch": torch.__version__, "synthetic": True,
            "corpus_sha256": hashlib.sha256("\n".join(docs).encode()).hexdigest(),
            "data_sha256": data_sha256}
    with atomic_dir(model_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "build_info.json").write_text(json.dumps(info, indent=1) + "\n")
    return info
