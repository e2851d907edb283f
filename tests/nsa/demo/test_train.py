"""A short training run of a small demo config learns; bad CLI input gets a clear error."""
from __future__ import annotations

import subprocess
import sys

import torch

from nsa.demo.corpus import training_documents
from nsa.demo.tokenizer import train_tokenizer
from nsa.demo.train import ModelShape, TrainConfig, build_model, pack, train


def test_short_training_run_learns():
    torch.set_num_threads(1)
    docs = training_documents(0, 3000)
    tok = train_tokenizer(docs, vocab_size=512)
    assert len(tok(" positive", add_special_tokens=False)["input_ids"]) == 1
    stream = pack(docs, tok)
    torch.manual_seed(0)
    model = build_model(ModelShape(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=172), tok)
    assert model.config.vocab_size == len(tok) and model.config.max_position_embeddings >= 1024
    losses = train(model, stream, TrainConfig(steps=40, batch_size=8, seq_len=64, lr=1e-2, warmup=5))
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last < first - 2.0, f"loss did not fall enough: {first:.2f} -> {last:.2f}"


def test_training_is_deterministic():
    torch.set_num_threads(1)
    docs = training_documents(1, 500)
    tok = train_tokenizer(docs, vocab_size=300)
    stream = pack(docs, tok)
    shape = ModelShape(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    cfg = TrainConfig(steps=3, batch_size=2, seq_len=32)
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model(shape, tok)
        train(model, stream, cfg)
        results.append(model.state_dict())
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_cli_rejects_bad_steps():
    proc = subprocess.run([sys.executable, "-m", "nsa", "demo", "build", "--steps", "0"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--steps must be a positive integer" in proc.stderr


def test_cli_rejects_bad_knobs():
    for args, message in ((["--lr", "0"], "--lr must be positive"),
                          (["--prompted-share", "1.5"], "--prompted-share must be in"),
                          (["--answer-weight", "-1"], "--answer-weight must be positive")):
        proc = subprocess.run([sys.executable, "-m", "nsa", "demo", "build", *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
