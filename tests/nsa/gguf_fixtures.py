"""Tiny GGUF files written with the `gguf` package's own writer, for the tests of `nsa.gguf`.

`write_tiny_gguf` writes a real, loadable model of a few thousand parameters: llama (SmolLM/Mistral-style
decoder, tied embeddings by default), qwen2 (llama plus q/k/v biases) or gpt2, with tensors in F32, F16 or a
block quantization the `gguf` package can produce (Q8_0, Q4_0, ...), and a byte-level BPE tokenizer in the
metadata (`tokenizer.ggml.model = "gpt2"`: the 256 byte symbols, a few merges, one control token), which is
what transformers' GGUF tokenizer conversion turns into a fast tokenizer.

Tensor names and metadata keys follow llama.cpp's conventions (`token_embd.weight`, `blk.N.attn_q.weight`,
`<arch>.block_count`, ...): the same names transformers' GGUF loader maps back to its own. Weights are
seeded random numbers, so two calls with the same arguments write byte-identical files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

# a few byte-level merges, so the tokenizer has more than single bytes ("Ġ" is the byte-level space)
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "a n", "e r", "Ġ a", "o n", "r e", "Ġ s", "Ġ c", "a t"]
EOS = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """GPT-2's printable stand-ins for the 256 bytes, in byte order (what `bytes_to_unicode` gives)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    table = dict(zip(bs, cs))
    return [chr(table[b]) for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[int], list[str]]:
    """(tokens, token types, merges): 256 bytes + one token per merge + `<|endoftext|>` (control)."""
    tokens = _byte_symbols() + ["".join(m.split(" ")) for m in MERGES] + [EOS]
    types = [1] * (len(tokens) - 1) + [3]  # 1 NORMAL, 3 CONTROL
    return tokens, types, list(MERGES)


def _add(writer, name: str, array: np.ndarray, qtype: str, overrides: dict[str, str]) -> None:
    """Add one tensor; 1-D tensors (norms, biases) stay F32, as llama.cpp writes them. A tensor named in
    `overrides` is written as all-zero bytes of that ggml type instead (any type, even one `gguf` cannot
    quantize or dequantize, such as Q8_1)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

    array = np.ascontiguousarray(array, dtype=np.float32)
    if name in overrides:
        q = GGMLQuantizationType[overrides[name]]
        block, type_size = GGML_QUANT_SIZES[q]
        raw = np.zeros((*array.shape[:-1], array.shape[-1] // block * type_size), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=q)
    elif array.ndim == 1 or qtype == "F32":
        writer.add_tensor(name, array)
    elif qtype == "F16":
        writer.add_tensor(name, array.astype(np.float16))
    else:
        q = GGMLQuantizationType[qtype]
        writer.add_tensor(name, quants.quantize(array, q), raw_dtype=q)  # shape given in bytes


def write_tiny_gguf(path: str | Path, arch: str = "llama", qtype: str = "F32", *, n_layers: int = 2,
                    hidden: int = 32, ffn: int = 64, heads: int = 4, kv_heads: int = 2, tied: bool = True,
                    seed: int = 0, name: str | None = None, tokenizer: bool = True,
                    context_length: int | None = None, overrides: dict[str, str] | None = None,
                    extra_metadata: dict[str, int] | None = None) -> Path:
    """Write a tiny model of `arch` ("llama", "qwen2" or "gpt2"; any other string writes llama-shaped tensors
    under that architecture name) to `path`, 2-D weights in `qtype` ("F32", "F16", "Q8_0", "Q4_1", ...).
    `overrides` writes the named tensors as zero bytes of another ggml type; `extra_metadata` adds uint32 keys.
    """
    from gguf import GGUFWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    overrides = overrides or {}
    # transformers' GPT-2 GGUF mapping reads neither the MLP width nor the position table's size: it keeps
    # GPT2Config's defaults (4 x hidden, 1024 positions), so a GPT-2 file only loads with those shapes
    context = context_length or (1024 if arch == "gpt2" else 128)
    if arch == "gpt2":
        ffn = 4 * hidden
    tokens, types, merges = tiny_vocab()
    vocab = len(tokens)
    head_dim = hidden // heads

    def w(*shape: int, scale: float = 0.2) -> np.ndarray:
        return rng.normal(0.0, scale, size=shape).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + rng.normal(0.0, 0.05, size=n)).astype(np.float32)

    writer = GGUFWriter(str(path), arch)
    writer.add_name(name or f"tiny-{arch}")
    writer.add_uint32(f"{arch}.block_count", n_layers)
    writer.add_uint32(f"{arch}.context_length", context)
    writer.add_uint32(f"{arch}.embedding_length", hidden)
    writer.add_uint32(f"{arch}.feed_forward_length", ffn)
    writer.add_uint32(f"{arch}.attention.head_count", heads)
    if arch == "gpt2":
        writer.add_float32(f"{arch}.attention.layer_norm_epsilon", 1e-5)
    else:
        writer.add_uint32(f"{arch}.attention.head_count_kv", kv_heads)
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
        writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
        writer.add_uint32(f"{arch}.rope.dimension_count", head_dim)
        writer.add_uint32(f"{arch}.vocab_size", vocab)
    from gguf import LlamaFileType

    file_type = LlamaFileType.ALL_F32 if qtype == "F32" else LlamaFileType[f"MOSTLY_{qtype}"]
    writer.add_uint32("general.file_type", int(file_type))
    for key, value in (extra_metadata or {}).items():
        writer.add_uint32(key, value)
    if tokenizer:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
        writer.add_bos_token_id(vocab - 1)
        writer.add_eos_token_id(vocab - 1)

    _add(writer, "token_embd.weight", w(vocab, hidden, scale=0.5), qtype, overrides)
    if arch == "gpt2":
        _add(writer, "position_embd.weight", w(context, hidden, scale=0.05), qtype, overrides)
    for i in range(n_layers):
        b = f"blk.{i}."
        if arch == "gpt2":
            _add(writer, b + "attn_norm.weight", norm(hidden), qtype, overrides)
            _add(writer, b + "attn_norm.bias", w(hidden, scale=0.02), qtype, overrides)
            _add(writer, b + "attn_qkv.weight", w(3 * hidden, hidden), qtype, overrides)
            _add(writer, b + "attn_qkv.bias", w(3 * hidden, scale=0.02), qtype, overrides)
            _add(writer, b + "attn_output.weight", w(hidden, hidden), qtype, overrides)
            _add(writer, b + "attn_output.bias", w(hidden, scale=0.02), qtype, overrides)
            _add(writer, b + "ffn_norm.weight", norm(hidden), qtype, overrides)
            _add(writer, b + "ffn_norm.bias", w(hidden, scale=0.02), qtype, overrides)
            _add(writer, b + "ffn_up.weight", w(ffn, hidden), qtype, overrides)
            _add(writer, b + "ffn_up.bias", w(ffn, scale=0.02), qtype, overrides)
            _add(writer, b + "ffn_down.weight", w(hidden, ffn), qtype, overrides)
            _add(writer, b + "ffn_down.bias", w(hidden, scale=0.02), qtype, overrides)
            continue
        _add(writer, b + "attn_norm.weight", norm(hidden), qtype, overrides)
        _add(writer, b + "attn_q.weight", w(heads * head_dim, hidden), qtype, overrides)
        _add(writer, b + "attn_k.weight", w(kv_heads * head_dim, hidden), qtype, overrides)
        _add(writer, b + "attn_v.weight", w(kv_heads * head_dim, hidden), qtype, overrides)
        if arch == "qwen2":
            _add(writer, b + "attn_q.bias", w(heads * head_dim, scale=0.02), qtype, overrides)
            _add(writer, b + "attn_k.bias", w(kv_heads * head_dim, scale=0.02), qtype, overrides)
            _add(writer, b + "attn_v.bias", w(kv_heads * head_dim, scale=0.02), qtype, overrides)
        _add(writer, b + "attn_output.weight", w(hidden, heads * head_dim), qtype, overrides)
        _add(writer, b + "ffn_norm.weight", norm(hidden), qtype, overrides)
        _add(writer, b + "ffn_gate.weight", w(ffn, hidden), qtype, overrides)
        _add(writer, b + "ffn_up.weight", w(ffn, hidden), qtype, overrides)
        _add(writer, b + "ffn_down.weight", w(hidden, ffn), qtype, overrides)
    _add(writer, "output_norm.weight", norm(hidden), qtype, overrides)
    if arch == "gpt2":
        _add(writer, "output_norm.bias", w(hidden, scale=0.02), qtype, overrides)
    if not tied or arch == "gpt2":
        _add(writer, "output.weight", w(vocab, hidden, scale=0.5), qtype, overrides)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def set_tensor_type_id(path: str | Path, tensor_name: str, type_id: int) -> None:
    """Overwrite the ggml type id of one tensor in the file's tensor table (in place), e.g. with an id no
    `gguf` release knows, as a file from a newer llama.cpp (or a damaged one) would hold."""
    import struct

    path = Path(path)
    data = bytearray(path.read_bytes())
    key = struct.pack("<Q", len(tensor_name)) + tensor_name.encode()
    at = data.index(key) + len(key)  # the entry: name, n_dims (u32), dims (u64 each), type (u32), offset (u64)
    (n_dims,) = struct.unpack_from("<I", data, at)
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    path.write_bytes(bytes(data))
