"""nsa.gguf: finding, inspecting and converting GGUF files, on real files (tiny ones written with `gguf`'s own
writer, and the real SmolLM2-135M-Instruct Q4_1 file in ../shared), and a clear NSAError for each bad input."""
from __future__ import annotations

import json
import shutil
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from nsa import gguf as G
from nsa.errors import NSAError
from tests.conftest import SHARED
from tests.nsa.gguf_fixtures import set_tensor_type_id, write_tiny_gguf

REAL_GGUF = SHARED / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
REAL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TEXT = "the cat sat on the mat"


def _direct(path: Path):
    """(model, tokenizer) loaded by transformers straight from the GGUF file, float32, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _converted(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(folder)))


def _fails(fn, *args) -> tuple[str, float]:
    """The NSAError message `fn(*args)` raises, and the seconds it took."""
    start = time.perf_counter()
    with pytest.raises(NSAError) as info:
        fn(*args)
    return str(info.value), time.perf_counter() - start


# ------------------------------------------------------------------------------------------ supported set

def test_supported_architectures_are_loadable_by_transformers_and_gguf():
    import gguf
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    for arch in G.SUPPORTED_ARCHITECTURES:
        assert arch in GGUF_SUPPORTED_ARCHITECTURES, arch
        assert arch in gguf.MODEL_ARCH_NAMES.values(), arch
    # the engine's other families have no GGUF route: llama.cpp has no OPT format, and transformers cannot
    # load llama.cpp's "gptneox" files. If that changes, widen SUPPORTED_ARCHITECTURES.
    for arch in ("opt", "gptneox", "gpt_neox"):
        assert arch not in GGUF_SUPPORTED_ARCHITECTURES
    assert "llama (" in G.supported_text() and "qwen2 (" in G.supported_text() and "gpt2 (" in G.supported_text()


# ------------------------------------------------------------------------------------------ find_gguf

def test_find_gguf(tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    f = write_tiny_gguf(one / "m.gguf")
    (one / "README.md").write_text("hi")
    (one / ".partial.gguf").write_bytes(b"")  # hidden: ignored
    assert G.find_gguf(f) == f.resolve()
    assert G.find_gguf(one) == f.resolve()
    assert G.find_gguf(str(one)) == f.resolve()

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert G.find_gguf(plain) is None  # an ordinary model folder
    assert G.find_gguf(plain / "config.json") is None  # a file that is not .gguf
    assert G.find_gguf("HuggingFaceTB/SmolLM2-135M") is None  # a hub id

    msg, _ = _fails(G.find_gguf, tmp_path / "missing.gguf")
    assert "missing.gguf" in msg and "does not exist" in msg


def test_folder_with_two_gguf_files(tmp_path):
    write_tiny_gguf(tmp_path / "a-Q8_0.gguf", qtype="Q8_0")
    write_tiny_gguf(tmp_path / "b-F16.GGUF", qtype="F16")
    msg, seconds = _fails(G.find_gguf, tmp_path)
    assert "2 GGUF files" in msg and "a-Q8_0.gguf" in msg and "b-F16.GGUF" in msg
    assert "pass the file you want itself" in msg and seconds < 2
    msg2, _ = _fails(G.inspect_gguf, tmp_path)
    assert msg2 == msg


# ------------------------------------------------------------------------------------------ inspect

def test_inspect_tiny(tmp_path):
    f = write_tiny_gguf(tmp_path / "tiny.gguf", qtype="Q8_0", name="Tiny Llama")
    info = G.inspect_gguf(f)
    assert info.architecture == "llama" and info.name == "Tiny Llama" and info.version == 3
    assert info.path == f.resolve() and info.size == f.stat().st_size
    assert info.quant_types == ("Q8_0",) and info.file_type == "MOSTLY_Q8_0"
    # 2-D weights in Q8_0, norms in F32: 1 embedding + 7 per layer, 2 norms per layer + the final one
    assert info.tensor_types == {"Q8_0": 1 + 2 * 7, "F32": 2 * 2 + 1}
    assert info.n_layers == 2 and info.hidden_size == 32 and info.vocab_size == 269 and info.tokenizer == "gpt2"
    assert info.n_parameters == 269 * 32 + 2 * (32 + 32 * 32 + 2 * 16 * 32 + 32 * 32 + 32 + 3 * 64 * 32) + 32
    assert info.sha256 == G.gguf_sha256(f) and len(info.sha256) == 64
    assert "Tiny Llama" in info.summary() and "Q8_0 x15" in info.summary()
    assert json.loads(json.dumps(info.to_json()))["architecture"] == "llama"
    assert G.inspect_gguf(f) is info  # cached by (path, size, mtime)


# ------------------------------------------------------------------------------------------ convert

@pytest.mark.parametrize("arch,qtype,tied", [
    ("llama", "F32", True),
    ("llama", "Q8_0", True),
    ("llama", "F16", False),
    ("qwen2", "Q8_0", True),
    ("gpt2", "F16", False),
])
def test_convert_matches_the_model_transformers_loads_from_the_gguf(tmp_path, arch, qtype, tied):
    import torch

    f = write_tiny_gguf(tmp_path / "src" / f"tiny-{arch}.gguf", arch, qtype, tied=tied)
    cache = tmp_path / "cache"
    steps = []
    folder = G.convert_gguf(f, cache, progress=lambda frac, msg: steps.append((frac, msg)))

    sha = G.gguf_sha256(f)
    assert folder == cache / "models" / f"gguf-{sha[:16]}"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "gguf.json"} <= names
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    meta = json.loads((folder / "gguf.json").read_text())
    assert meta["sha256"] == sha and meta["architecture"] == arch and meta["source"] == str(f.resolve())
    assert meta["size"] == f.stat().st_size and meta["versions"]["gguf"] == version("gguf")
    assert G.is_converted(folder, sha)
    fractions = [s[0] for s in steps]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0

    model, tok = _converted(folder)
    direct, direct_tok = _direct(f)
    assert type(model) is type(direct) and model.config.model_type == arch
    assert getattr(model.config, "quantization_config", None) is None
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    ids = tok(TEXT, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(TEXT, return_tensors="pt").input_ids.tolist()
    assert tok.decode(ids[0]) == TEXT
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
    for (name, p), (name2, q) in zip(model.state_dict().items(), direct.state_dict().items()):
        assert name == name2 and torch.equal(p, q), name
    if arch == "llama" and tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()

    # a second call returns the same folder at once, without rewriting it
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert G.convert_gguf(f, cache) == folder
    assert time.perf_counter() - start < 2
    G._INFO.clear(), G._SHA256.clear()  # as in a fresh process: header and hash read again
    start = time.perf_counter()
    assert G.convert_gguf(f, cache) == folder
    assert time.perf_counter() - start < 3
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_same_content_elsewhere_shares_the_conversion(tmp_path):
    f = write_tiny_gguf(tmp_path / "a" / "x.gguf", qtype="Q8_0")
    copy = tmp_path / "b" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(f, copy)
    other = write_tiny_gguf(tmp_path / "c" / "x.gguf", qtype="Q8_0", seed=1)
    cache = tmp_path / "cache"
    folder = G.convert_gguf(f, cache)
    assert G.convert_gguf(copy, cache) == folder  # keyed by content, not by path or name
    assert G.convert_gguf(other, cache) != folder
    # converting again elsewhere writes the same bytes (gguf.json aside: it records the source and the time)
    again = G.convert_gguf(copy, tmp_path / "cache2")
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json"):
        assert (again / name).read_bytes() == (folder / name).read_bytes(), name


def test_gguf_without_tokenizer_converts_weights_only(tmp_path):
    f = write_tiny_gguf(tmp_path / "weights.gguf", tokenizer=False)
    info = G.inspect_gguf(f)
    assert info.tokenizer is None and info.vocab_size == 269  # from llama.vocab_size
    folder = G.convert_gguf(f, tmp_path / "cache")
    assert {p.name for p in folder.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                 "gguf.json", "manifest.json"}
    assert json.loads((folder / "gguf.json").read_text())["tokenizer"] is False


def test_interrupted_conversion_leaves_nothing(tmp_path):
    f = write_tiny_gguf(tmp_path / "x.gguf")
    cache = tmp_path / "cache"

    def stop_while_writing(fraction, message):
        if fraction >= 0.95:  # model.safetensors is written, the tokenizer and gguf.json are not
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        G.convert_gguf(f, cache, progress=stop_while_writing)
    assert list((cache / "models").iterdir()) == []
    folder = G.convert_gguf(f, cache)
    assert G.is_converted(folder)


def test_incomplete_folder_is_rebuilt(tmp_path):
    f = write_tiny_gguf(tmp_path / "x.gguf")
    cache = tmp_path / "cache"
    target = G.converted_dir(cache, G.gguf_sha256(f))
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # e.g. a folder copied by hand, without weights or gguf.json
    assert not G.is_converted(target)
    assert G.convert_gguf(f, cache) == target and G.is_converted(target)
    assert (target / "model.safetensors").is_file()


@pytest.mark.parametrize("damage", ["truncate", "edit"])
def test_damaged_weights_are_detected_and_reconverted(tmp_path, damage):
    f = write_tiny_gguf(tmp_path / "x.gguf", qtype="Q8_0")
    cache = tmp_path / "cache"
    folder = G.convert_gguf(f, cache)
    weights = folder / "model.safetensors"
    good = weights.read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "models" and manifest["files"]["model.safetensors"]["size"] == len(good)
    if damage == "truncate":
        weights.write_bytes(good[: len(good) // 2])
    else:  # same size, one byte of tensor data changed: caught by the checksum
        weights.write_bytes(good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:])
    assert not G.is_converted(folder)
    assert G.conversion_problems(folder)[0].startswith("model.safetensors: ")
    steps = []
    assert G.convert_gguf(f, cache, progress=lambda frac, msg: steps.append(msg)) == folder
    said = [m for m in steps if "is bad" in m]
    assert len(said) == 1 and "model.safetensors" in said[0] and "converting it again" in said[0], steps
    assert weights.read_bytes() == good and G.is_converted(folder, G.gguf_sha256(f))


# ------------------------------------------------------------------------------------------ bad inputs

def test_truncated_gguf(tmp_path):
    whole = write_tiny_gguf(tmp_path / "whole.gguf", qtype="Q8_0").read_bytes()
    for cut in (20, 100, len(whole) // 2, len(whole) - 1):
        f = tmp_path / f"cut{cut}.gguf"
        f.write_bytes(whole[:cut])
        msg, seconds = _fails(G.inspect_gguf, f)
        assert f.name in msg and f"{cut:,} bytes" in msg and "truncated" in msg, msg
        assert "Download or copy" in msg and seconds < 2
    cache = tmp_path / "cache"
    msg2, _ = _fails(G.convert_gguf, f, cache)
    assert "truncated" in msg2 and not (cache / "models").exists()


def test_not_a_gguf(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_text('{"model_type": "llama"}' * 10)
    msg, seconds = _fails(G.inspect_gguf, f)
    assert "model.gguf" in msg and "is not a GGUF file" in msg and "magic" in msg and seconds < 1
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    msg, _ = _fails(G.inspect_gguf, empty)
    assert "empty.gguf is empty" in msg


def test_corrupt_tensor_data(tmp_path):
    """A header that reads fine over damaged tensor bytes: a Q8_0 block scale set to NaN."""
    import gguf

    f = write_tiny_gguf(tmp_path / "nan.gguf", qtype="Q8_0")
    start = next(t for t in gguf.GGUFReader(f).tensors if t.name == "blk.1.ffn_up.weight").data_offset
    data = bytearray(f.read_bytes())
    data[start:start + 2] = b"\x00\x7e"  # float16 NaN as the first block's scale
    f.write_bytes(bytes(data))
    G.inspect_gguf(f)  # the header is fine
    msg, _ = _fails(G.convert_gguf, f, tmp_path / "cache")
    assert "nan.gguf is corrupt" in msg and "NaN/inf" in msg and "layers.1.mlp.up_proj.weight" in msg
    assert not (tmp_path / "cache" / "models").exists()


@pytest.mark.parametrize("arch", ["mamba", "bert", "gptneox", "mistral3"])
def test_unsupported_architecture(tmp_path, arch):
    f = write_tiny_gguf(tmp_path / f"{arch}.gguf", arch=arch)
    msg, seconds = _fails(G.inspect_gguf, f)
    assert f"holds a {arch!r} model" in msg and f.name in msg and seconds < 2
    for supported in ("llama (", "qwen2 (", "gpt2 ("):
        assert supported in msg
    assert "GPT-NeoX" in msg  # says why an engine family is missing from the list
    msg2, _ = _fails(G.convert_gguf, f, tmp_path / "cache")
    assert msg2 == msg


def test_quantization_type_gguf_cannot_dequantize(tmp_path):
    """Q8_1 is a real ggml block type (llama.cpp uses it for activations) that gguf 0.19 can read but not
    dequantize; transformers' loader dequantizes every tensor with `gguf`, so such a file cannot load."""
    import gguf
    import numpy as np

    assert "Q8_1" not in G.dequantizable_types() and "Q4_1" in G.dequantizable_types()
    with pytest.raises(NotImplementedError):  # the premise: the installed gguf really cannot
        gguf.quants.dequantize(np.zeros((1, 40), np.uint8), gguf.GGMLQuantizationType.Q8_1)

    f = write_tiny_gguf(tmp_path / "q81.gguf", qtype="Q8_0", overrides={"blk.0.ffn_down.weight": "Q8_1"})
    msg, seconds = _fails(G.inspect_gguf, f)
    assert "Q8_1 (1 tensor)" in msg and "blk.0.ffn_down.weight" in msg and seconds < 2
    assert f"gguf {version('gguf')} cannot dequantize" in msg and "Q4_K" in msg and "pip install -U gguf" in msg
    # without the check, the failure comes from deep inside transformers, after the tokenizer was built
    with pytest.raises(NotImplementedError, match="Q8_1"):
        _direct(f)


def test_tensor_type_unknown_to_gguf(tmp_path):
    f = write_tiny_gguf(tmp_path / "new.gguf", qtype="Q8_0")
    set_tensor_type_id(f, "blk.1.ffn_down.weight", 99)
    msg, seconds = _fails(G.inspect_gguf, f)
    assert "new.gguf" in msg and "unknown to the installed gguf" in msg and "99" in msg and seconds < 2


def test_split_gguf(tmp_path):
    f = write_tiny_gguf(tmp_path / "m-00001-of-00002.gguf", extra_metadata={"split.count": 2})
    msg, _ = _fails(G.inspect_gguf, f)
    assert "split into 2 files" in msg and "merge" in msg


def test_gpt2_shapes_transformers_cannot_build(tmp_path):
    f = write_tiny_gguf(tmp_path / "gpt2.gguf", arch="gpt2", context_length=256)
    msg, _ = _fails(G.inspect_gguf, f)
    assert "256 positions" in msg and "1024" in msg


# ------------------------------------------------------------------------------------------ the real model

@pytest.fixture(scope="session")
def real_converted(smollm2_dir):
    """(GGUFInfo, converted folder, conversion seconds) of the real SmolLM2-135M-Instruct Q4_1 file: the session's
    one conversion (conftest's `smollm2_dir`); the seconds are those of asking again, which must be a cache hit."""
    start = time.perf_counter()
    folder = G.convert_gguf(REAL_GGUF, smollm2_dir.parent.parent)
    return G.inspect_gguf(REAL_GGUF), folder, time.perf_counter() - start


def test_inspect_real_file():
    if not REAL_GGUF.is_file():
        pytest.skip(f"{REAL_GGUF} not found (set NSA_SHARED_DIR)")
    start = time.process_time()  # CPU seconds: a loaded CI machine stretches wall time, not the work
    info = G.inspect_gguf(REAL_GGUF.parent)  # the folder holds exactly this one GGUF
    assert time.process_time() - start < 15
    assert info.path == REAL_GGUF and info.architecture == "llama" and info.size == 98_362_432
    assert info.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1} and info.quant_types == ("Q4_1", "Q8_0")
    assert info.n_parameters == 134_515_008 and info.n_layers == 30 and info.hidden_size == 576
    assert info.vocab_size == 49152 and info.tokenizer == "gpt2" and info.file_type == "MOSTLY_Q4_1"
    assert info.sha256 == REAL_SHA256


@pytest.mark.slow
def test_real_gguf_converts_to_a_working_llama(real_converted):
    import gguf
    import torch

    info, folder, seconds = real_converted
    assert folder.name == f"gguf-{REAL_SHA256[:16]}"
    meta = json.loads((folder / "gguf.json").read_text())
    assert meta["sha256"] == REAL_SHA256 and meta["model_class"] == "LlamaForCausalLM"
    assert meta["parameters"] == 134_515_008 and meta["tensor_types"]["Q4_1"] == 210

    start = time.perf_counter()
    model, tok = _converted(folder)
    load_seconds = time.perf_counter() - start
    print(f"\nconversion {seconds:.1f} s, load {load_seconds:.2f} s, "
          f"folder {sum(p.stat().st_size for p in folder.iterdir()) / 1e6:.0f} MB")
    assert type(model).__name__ == "LlamaForCausalLM"
    n = sum(p.numel() for p in model.parameters())
    assert n == 134_515_008 and f"{n / 1e6:.1f}M" == "134.5M"
    assert model.config.tie_word_embeddings and getattr(model.config, "quantization_config", None) is None

    # the saved weights are exactly what gguf dequantizes (Q8_0 embedding, a Q4_1 matrix)
    tensors = {t.name: t for t in gguf.GGUFReader(REAL_GGUF).tensors if t.name in ("token_embd.weight",
                                                                                  "blk.0.ffn_down.weight")}
    for name, param in (("token_embd.weight", model.model.embed_tokens.weight),
                        ("blk.0.ffn_down.weight", model.model.layers[0].mlp.down_proj.weight)):
        t = tensors[name]
        expected = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy())
        assert torch.equal(param.detach(), expected.reshape(param.shape)), name

    ids = tok("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=6, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])

    # a second conversion request (even from a fresh process) returns the cached folder in seconds
    G._INFO.clear(), G._SHA256.clear()
    start = time.perf_counter()
    assert G.convert_gguf(REAL_GGUF, folder.parent.parent) == folder
    assert time.perf_counter() - start < 15
