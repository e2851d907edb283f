"""Calibration sets on the real corpora in ../shared/data with stories260K's tokenizer."""
from __future__ import annotations

import json
import random

import pytest
import torch

from nsa import calibration as C
from nsa import datasets as D
from nsa.errors import NSAError
from nsa.paths import cache_dir


@pytest.fixture(scope="module")
def tok(stories_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(stories_dir)


def test_c4_follows_the_reference_loader(tok):
    """Re-derive the windows with the reference get_c4 loop (random doc longer than seqlen, random window)."""
    calib = C.build_calibration("c4", tok, nsamples=6, seqlen=64, seed=3, use_cache=False)
    docs = [r["text"] for r in D.load_examples("c4")]
    random.seed(3)
    expected = []
    for _ in range(6):
        while True:
            i = random.randint(0, len(docs) - 1)
            enc = tok(docs[i], return_tensors="pt").input_ids
            if enc.shape[1] > 64:
                break
        i = random.randint(0, enc.shape[1] - 64 - 1)
        expected.append(enc[:, i:i + 64])
    assert torch.equal(calib.input_ids, torch.cat(expected, dim=0))
    assert calib.input_ids.shape == (6, 64) and calib.input_ids.dtype == torch.long
    assert calib.strategy == "documents" and calib.n_tokens == 6 * 64 and 0 < calib.diversity <= 1


def test_reproducible_by_seed_and_cached(tok):
    a = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=0)
    b = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=0)
    fresh = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=0, use_cache=False)
    other = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=1)
    assert not a.cached and b.cached and b.key == a.key
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.input_ids, fresh.input_ids)
    assert not torch.equal(a.input_ids, other.input_ids)
    folder = cache_dir() / "calibration" / a.key
    assert (folder / "input_ids.safetensors").is_file() and (folder / "manifest.json").is_file()
    meta = json.loads((folder / "calibration.json").read_text())
    assert meta["source"] == "wikitext2" and meta["seed"] == 0 and meta["diversity"] == pytest.approx(a.diversity)
    assert list(folder.glob("*.pkl")) == [] and list(folder.glob("*.pt")) == []


def test_a_corrupted_cached_set_is_rebuilt_and_said_so(tok):
    """A truncated calibration file in the cache used to fail every job with a bare SafetensorError, forever."""
    a = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=7)
    path = cache_dir() / "calibration" / a.key / "input_ids.safetensors"
    path.write_bytes(path.read_bytes()[:20])
    messages = []
    b = C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=7, progress=messages.append)
    assert not b.cached and torch.equal(a.input_ids, b.input_ids)
    assert any("bad" in m.message and "rebuilding" in m.message for m in messages)
    assert C.build_calibration("wikitext2", tok, nsamples=4, seqlen=32, seed=7).cached


def test_an_edited_source_file_is_a_new_set(tok, tmp_path):
    """The cache key covers the source file's content, not its path and modification time."""
    f = tmp_path / "texts.txt"
    f.write_text("\n".join(f"sentence number {i} about cats and dogs" for i in range(200)))
    a = C.build_calibration("file", tok, nsamples=2, seqlen=16, path=f)
    f.write_text("\n".join(f"another text {i} about birds" for i in range(200)))
    b = C.build_calibration("file", tok, nsamples=2, seqlen=16, path=f)
    assert a.key != b.key and not b.cached


def test_wikitext2_stream_is_the_reference_join(tok):
    calib = C.build_calibration("wikitext2", tok, nsamples=3, seqlen=16, seed=5, use_cache=False)
    texts = [r["text"] for r in D.load_examples("wikitext2", split="train_sample")]
    stream = tok(" ".join(texts)).input_ids
    random.seed(5)
    starts = [random.randint(0, len(stream) - 16 - 1) for _ in range(3)]
    assert calib.input_ids.tolist() == [stream[s:s + 16] for s in starts]


def test_short_texts_are_joined_with_eos(tok):
    """SST-2 phrases are far shorter than a window: windows hold several texts separated by EOS."""
    calib = C.build_calibration("sst2", tok, nsamples=8, seqlen=128, seed=0)
    assert calib.strategy == "stream" and calib.extra["file"].endswith("train_sample.jsonl")
    eos_per_row = (calib.input_ids == tok.eos_token_id).sum(dim=1)
    assert (eos_per_row >= 1).all()
    first = D.load_examples("sst2", split="train_sample", limit=1)[0]["text"]
    ids = tok(first, add_special_tokens=False).input_ids
    assert calib.source_tokens >= 2000 + len(ids)  # every text + one separator each


def test_diversity_orders_sources(tok):
    """Windows cut from one repeated text are less diverse than C4 windows."""
    same = C.window_diversity([[1, 2, 3, 4]] * 5)
    assert same == pytest.approx(0.0, abs=1e-9)
    assert C.window_diversity([[1, 2], [3, 4]]) == pytest.approx(1.0)
    assert C.window_diversity([[1, 2]]) is None


def test_user_file_and_errors(tok, tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps({"text": f"note number {i} about the weather"}) + "\n" for i in range(40)))
    calib = C.build_calibration("mine", tok, nsamples=2, seqlen=32, path=f)
    assert calib.input_ids.shape == (2, 32) and calib.extra["file"] == str(f)
    txt = tmp_path / "mine.txt"
    txt.write_text("one line\nanother line\n" * 30)
    assert C.build_calibration("txt", tok, nsamples=2, seqlen=16, path=txt).input_ids.shape == (2, 16)
    with pytest.raises(NSAError, match="unknown calibration source 'nope'.*c4, wikitext2"):
        C.build_calibration("nope", tok, 2, 16)
    with pytest.raises(NSAError, match="has only .* tokens"):
        C.build_calibration("tiny", tok, 2, 4096, path=txt)
    with pytest.raises(NSAError, match="nsamples must be a positive integer"):
        C.build_calibration("c4", tok, 0, 16)
    with pytest.raises(NSAError, match="no document is longer than seqlen=500"):
        C.build_calibration("docs", tok, 1, 500, path=txt, strategy="documents", use_cache=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(NSAError, match="line 2: no 'text'"):
        C.build_calibration("bad", tok, 1, 8, path=bad)


def test_sources_listed():
    sources = C.list_calibration_sources()
    assert sources[:4] == ["c4", "wikitext2", "demo-generic", "demo-reviews"] and "sst2" in sources


@pytest.mark.parametrize("source", ["demo-generic", "demo-reviews"])
def test_demo_sources(tok, source):
    file = D.CALIBRATION_FILES[source]
    if not file.is_file():  # before `python -m nsa demo build` has written them
        with pytest.raises(NSAError, match="python -m nsa demo build"):
            C.build_calibration(source, tok, 2, 16)
        return
    calib = C.build_calibration(source, tok, 4, 32, seed=0)
    assert calib.input_ids.shape == (4, 32) and calib.strategy == "stream" and calib.extra["file"] == str(file)
