"""GGUF model files: accept a `.gguf` wherever a model is accepted, by converting it once to a normal folder.

A GGUF (llama.cpp's single-file format) holds the weights, usually block-quantized (Q4_1, Q8_0, Q4_K, ...),
the model's hyper-parameters and its tokenizer as metadata. NSA Lab prunes float weights, so a GGUF is
loaded through transformers' own GGUF support (`from_pretrained(..., gguf_file=...)`, which reads and
dequantizes it with the `gguf` package), and written once as an ordinary float32 transformers folder:

    cache_root / "models" / "gguf-<first 16 hex of the file's sha256>" /
        config.json, generation_config.json, model.safetensors,   # save_pretrained
        tokenizer.json, tokenizer_config.json, ...                 # the tokenizer rebuilt from the metadata
        gguf.json                                                  # provenance: source, sha256, types, versions
        manifest.json                                              # size and sha256 of every file, written last

The folder is an `nsa.artifacts.Entry` of kind "models" keyed by the file's content: built in a temporary
sibling and swapped into place with its manifest, so a killed conversion leaves nothing half-written; a later
call verifies it (sizes always, hashes once per process) and returns it, or converts again, saying why, when a
file was edited, truncated or removed.

The API:

- `find_gguf(path)`: the GGUF a model argument names (a `.gguf` file, or a folder holding exactly one), or None.
- `inspect_gguf(file)`: a `GGUFInfo` from the header alone, in about a second; every problem that can be
  seen there (not a GGUF, truncated, unsupported architecture, a tensor type the installed `gguf` cannot
  dequantize, a split file) is an `NSAError` with a clear message.
- `convert_gguf(file, cache_root, progress)`: the converted folder (converting it the first time).
- `gguf_sha256(file)`: the file's sha256, computed once per process per (path, size, mtime).

Supported architectures are the ones both the pruning engine (Llama, Mistral, Qwen2, OPT, GPT-2, GPT-NeoX)
and transformers' GGUF loader handle; see `SUPPORTED_ARCHITECTURES`.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Callable

from nsa.artifacts import Entry
from nsa.errors import NSAError

# `general.architecture` values accepted, and what they cover. The engine's families are Llama, Mistral, Qwen2,
# OPT, GPT-2 and GPT-NeoX; transformers' GGUF loader (`GGUF_SUPPORTED_ARCHITECTURES`) knows llama, mistral, qwen2
# and gpt2 of those. llama.cpp writes Mistral (and SmolLM, TinyLlama, ...) models as "llama"; it has no OPT
# format at all, and its "gptneox" files are not loadable by transformers. The tests check this table against
# the installed transformers.
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "llama": "Llama, plus Mistral, SmolLM and other models llama.cpp stores as llama",
    "qwen2": "Qwen2, Qwen2.5",
    "gpt2": "GPT-2",
}
CONVERTED_PREFIX = "gguf-"
PROVENANCE_FILE = "gguf.json"
CONVERTED_FORMAT = 1  # the "models" entry's format
_FLOAT_TYPES = ("F32", "F16", "BF16")  # stored as plain values, not blocks

Progress = Callable[[float, str], None]


def supported_text() -> str:
    """'llama (Llama, ...), qwen2 (...), gpt2 (GPT-2)': the supported architectures, for messages."""
    return ", ".join(f"{arch} ({what})" for arch, what in SUPPORTED_ARCHITECTURES.items())


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says (no tensor data read)."""

    path: Path  # resolved
    size: int  # bytes
    mtime_ns: int
    version: int  # GGUF format version (2 or 3)
    architecture: str  # general.architecture, e.g. "llama"
    name: str | None  # general.name, e.g. "Smollm2 135M 8k Lc100K Mix1 Ep2"
    n_tensors: int
    n_parameters: int  # elements over all tensors in the file (a tied lm_head is stored once)
    tensor_types: dict[str, int]  # ggml type name -> number of tensors, e.g. {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    file_type: str | None  # general.file_type as llama.cpp names it, e.g. "MOSTLY_Q4_1"
    n_layers: int | None  # <arch>.block_count
    hidden_size: int | None  # <arch>.embedding_length
    context_length: int | None  # <arch>.context_length
    vocab_size: int | None  # entries in tokenizer.ggml.tokens (or <arch>.vocab_size)
    tokenizer: str | None  # tokenizer.ggml.model ("gpt2", "llama", ...); None: no tokenizer in the file

    @property
    def quant_types(self) -> tuple[str, ...]:
        """The block-quantized types present (F32/F16/BF16 left out), most tensors first: ("Q4_1", "Q8_0")."""
        return tuple(t for t, _ in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]) if t not in _FLOAT_TYPES)

    @property
    def sha256(self) -> str:
        """The file's content hash (about 0.3 s per 100 MB the first time in a process, then cached)."""
        return gguf_sha256(self.path)

    def summary(self) -> str:
        """One line for people: name, architecture, size, parameters and tensor types."""
        types = ", ".join(f"{t} x{n}" for t, n in sorted(self.tensor_types.items(), key=lambda kv: -kv[1]))
        layers = f", {self.n_layers} layers" if self.n_layers else ""
        return (f"{self.path.name}: {self.name or 'unnamed'} ({self.architecture}{layers}, "
                f"{self.n_parameters / 1e6:.1f}M parameters, {self.size / 1e6:.1f} MB; tensors {types})")

    def to_json(self) -> dict:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


# ----------------------------------------------------------------------------------------------- finding

def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` names: the file itself when it ends in `.gguf`, or the only `.gguf` in a folder.

    None when `path` is neither (a folder without GGUF files, another file, a hub id): the caller treats it
    as an ordinary model. A folder with two or more GGUF files, or a `.gguf` path that does not exist, is
    an NSAError. A folder's GGUF wins over a `config.json` next to it; hidden files (`.x.gguf`) are ignored.
    """
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve() if p.suffix.lower() == ".gguf" else None
    if p.is_dir():
        found = sorted(q for q in p.iterdir()
                       if q.suffix.lower() == ".gguf" and not q.name.startswith(".") and q.is_file())
        if len(found) > 1:
            names = ", ".join(q.name for q in found)
            raise NSAError(f"folder {p} holds {len(found)} GGUF files ({names}): pass the file you want "
                           f"itself, e.g. {p / found[0].name}")
        return found[0].resolve() if found else None
    if p.suffix.lower() == ".gguf":
        raise NSAError(f"GGUF file {p} does not exist: check the path")
    return None


# ----------------------------------------------------------------------------------------------- hashing

_LOCK = threading.Lock()
_SHA256: dict[tuple[str, int, int], str] = {}
_INFO: dict[tuple[str, int, int], GGUFInfo] = {}


def _stamp(file: str | os.PathLike) -> tuple[str, int, int]:
    p = Path(file).expanduser().resolve()
    st = p.stat()
    return str(p), st.st_size, st.st_mtime_ns


def gguf_sha256(file: str | os.PathLike) -> str:
    """Hex sha256 of the file (read in 1 MiB blocks), cached per process by (path, size, mtime_ns)."""
    key = _stamp(file)
    with _LOCK:
        if key in _SHA256:
            return _SHA256[key]
    h = hashlib.sha256()
    with open(key[0], "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    digest = h.hexdigest()
    with _LOCK:
        _SHA256[key] = digest
    return digest


# ----------------------------------------------------------------------------------------------- inspecting

def _gguf_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("gguf")
    except PackageNotFoundError:  # pragma: no cover - imported from a source checkout
        return "unknown"


def _import_gguf():
    try:
        import gguf
    except ImportError as err:
        raise NSAError("reading GGUF files needs the `gguf` package: pip install gguf") from err
    return gguf


@lru_cache(maxsize=None)
def _can_dequantize(type_name: str) -> bool:
    """Whether the installed `gguf` can dequantize this ggml type: ask it to, on one all-zero block."""
    import numpy as np
    gguf = _import_gguf()
    qtype = gguf.GGMLQuantizationType[type_name]
    if qtype not in gguf.GGML_QUANT_SIZES:
        return False
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    try:
        gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
    except NotImplementedError:
        return False
    return True


def dequantizable_types() -> list[str]:
    """The ggml types the installed `gguf` package can dequantize (what transformers uses to read a GGUF)."""
    gguf = _import_gguf()
    return [t.name for t in gguf.GGMLQuantizationType if _can_dequantize(t.name)]


def _scalar(reader, key: str):
    field = reader.fields.get(key)
    if field is None or not field.types:
        return None
    gguf = _import_gguf()
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        return None
    return field.contents()


def _array_len(reader, key: str) -> int | None:
    field = reader.fields.get(key)
    return None if field is None else len(field.data)


def inspect_gguf(file: str | os.PathLike) -> GGUFInfo:
    """Read a GGUF's header with the `gguf` package's reader (no dequantization; ~2 s for a 100 MB file).

    Raises NSAError, naming the file, when it is not a GGUF, is truncated or corrupt, holds an architecture
    NSA Lab cannot convert (the message lists the supported ones), stores a tensor type the installed `gguf`
    cannot dequantize (naming the type and the gguf version), or is one part of a split GGUF.
    Results are cached per process by (path, size, mtime).
    """
    p = Path(file).expanduser()
    if p.is_dir():
        found = find_gguf(p)
        if found is None:
            raise NSAError(f"folder {p} holds no .gguf file")
        p = found
    if not p.is_file():
        raise NSAError(f"GGUF file {p} does not exist: check the path")
    key = _stamp(p)
    with _LOCK:
        if key in _INFO:
            return _INFO[key]
    info = _inspect(Path(key[0]), key[1], key[2])
    with _LOCK:
        _INFO[key] = info
    return info


def _inspect(path: Path, size: int, mtime_ns: int) -> GGUFInfo:
    where = f"{path} ({size:,} bytes)"
    with open(path, "rb") as fh:
        head = fh.read(8)
    if size == 0:
        raise NSAError(f"{path} is empty (0 bytes), not a GGUF file: download or copy it again")
    if head[:4] != b"GGUF":
        raise NSAError(f"{where} is not a GGUF file: it does not start with the GGUF magic bytes "
                       f"(it starts with {head[:4]!r}). Pass a .gguf model file, or a transformers model folder")
    if size < 24:
        raise NSAError(f"{where} is truncated: a GGUF header alone takes 24 bytes. Download or copy it again")

    gguf = _import_gguf()
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the reader fails in many ways on a cut or damaged file: all mean "unreadable"
        text = str(err)
        if "version" in text and "cannot handle" in text:
            raise NSAError(f"{where} is in a GGUF format version the installed gguf {_gguf_version()} cannot "
                           f"read ({text}); upgrade it (pip install -U gguf)") from err
        if "GGMLQuantizationType" in text:
            raise NSAError(f"{where} names a tensor type unknown to the installed gguf {_gguf_version()} "
                           f"({text}): the file is corrupt, or newer than that gguf (pip install -U gguf)") from err
        raise NSAError(f"{where} is truncated or corrupt: its GGUF header and tensor table cannot be read "
                       f"({type(err).__name__}: {text}). Download or copy the file again") from err

    tensors = list(reader.tensors)
    needed = max((int(t.data_offset) + int(t.n_bytes) for t in tensors), default=int(reader.data_offset))
    if needed > size:
        raise NSAError(f"{where} is truncated: its tensor table needs {needed:,} bytes. "
                       f"Download or copy the file again")
    if getattr(reader, "byte_order", "I") == "S":
        raise NSAError(f"{where} is a big-endian GGUF; transformers reads little-endian GGUF files only")

    arch = _scalar(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise NSAError(f"{where} is corrupt: its metadata has no general.architecture")
    split_count = _scalar(reader, "split.count")
    if isinstance(split_count, int) and split_count > 1:
        raise NSAError(f"{where} is one part of a GGUF split into {split_count} files; transformers loads whole "
                       f"files only: merge the parts first (llama.cpp: llama-gguf-split --merge first-part out.gguf)")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise NSAError(f"{path} holds a {arch!r} model, an architecture NSA Lab cannot convert from GGUF. "
                       f"Supported GGUF architectures: {supported_text()}. (OPT and GPT-NeoX are supported as "
                       f"transformers folders only: transformers cannot load them from GGUF.)")

    counts: dict[str, int] = {}
    for t in tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    bad = [name for name in counts if not _can_dequantize(name)]
    if bad:
        examples = ", ".join(next(t.name for t in tensors if t.tensor_type.name == b) for b in bad)
        listing = ", ".join(f"{b} ({counts[b]} tensor{'s' if counts[b] > 1 else ''})" for b in bad)
        raise NSAError(f"{path} stores tensors as {listing}, e.g. {examples}: a type the installed gguf "
                       f"{_gguf_version()} cannot dequantize. It can dequantize {', '.join(dequantizable_types())}. "
                       f"Use a GGUF quantized to one of those (Q8_0, Q4_K_M, ... are common), or upgrade gguf "
                       f"(pip install -U gguf)")

    hidden = _scalar(reader, f"{arch}.embedding_length")
    context = _scalar(reader, f"{arch}.context_length")
    if arch == "gpt2":  # transformers' GPT-2 GGUF mapping keeps GPT2Config's defaults for these two
        ffn = _scalar(reader, f"{arch}.feed_forward_length")
        if (hidden and ffn and ffn != 4 * hidden) or (context and context != 1024):
            raise NSAError(f"{path} is a GPT-2 with MLP width {ffn} and {context} positions; transformers' GGUF "
                           f"loader builds GPT-2 with MLP width 4 x hidden ({4 * (hidden or 0)}) and 1024 "
                           f"positions only, so it cannot load this file")

    file_type = _scalar(reader, "general.file_type")
    try:
        file_type = gguf.LlamaFileType(file_type).name if file_type is not None else None
    except ValueError:
        file_type = str(file_type)
    tokenizer = _scalar(reader, "tokenizer.ggml.model")
    vocab = _array_len(reader, "tokenizer.ggml.tokens") or _scalar(reader, f"{arch}.vocab_size")
    return GGUFInfo(
        path=path, size=size, mtime_ns=mtime_ns, version=int(_scalar(reader, "GGUF.version") or 0),
        architecture=arch, name=_scalar(reader, "general.name"), n_tensors=len(tensors),
        n_parameters=sum(int(t.n_elements) for t in tensors), tensor_types=counts, file_type=file_type,
        n_layers=_scalar(reader, f"{arch}.block_count"), hidden_size=hidden, context_length=context,
        vocab_size=vocab, tokenizer=tokenizer if isinstance(tokenizer, str) else None,
    )


# ----------------------------------------------------------------------------------------------- converting

def converted_dir(cache_root: str | os.PathLike, sha256: str) -> Path:
    """Where the conversion of the GGUF with this sha256 lives: cache_root/models/gguf-<sha256[:16]>."""
    return Path(cache_root) / "models" / f"{CONVERTED_PREFIX}{sha256[:16]}"


def converted_entry(cache_root: str | os.PathLike, sha256: str) -> Entry:
    """The conversion of the GGUF with this sha256 as a verifiable cache entry (kind "models")."""
    return Entry(converted_dir(cache_root, sha256), "models", CONVERTED_FORMAT)


def conversion_problems(folder: str | os.PathLike, sha256: str | None = None) -> list[str]:
    """What is wrong with a converted folder ([] = complete, verified against its manifest, and a conversion of
    the GGUF with this sha256 when given)."""
    folder = Path(folder)
    problems = Entry(folder, "models", CONVERTED_FORMAT).problems()
    if problems:
        return problems
    try:
        meta = json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return [f"{PROVENANCE_FILE} missing or unreadable"]
    if sha256 is not None and meta.get("sha256") != sha256:
        return [f"{PROVENANCE_FILE} names another file (sha256 {str(meta.get('sha256'))[:16]})"]
    return []


def is_converted(folder: str | os.PathLike, sha256: str | None = None) -> bool:
    """Whether `folder` is a complete, unchanged conversion (of the GGUF with this sha256, when given)."""
    return not conversion_problems(folder, sha256)


class _AlreadyConverted(Exception):
    """Another process finished the same conversion first: keep theirs."""


def convert_gguf(file: str | os.PathLike, cache_root: str | os.PathLike, progress: Progress | None = None) -> Path:
    """The float32 transformers folder converted from this GGUF, under `cache_root/models/gguf-<sha16>`.

    The first call dequantizes (about a minute for a 135M-parameter Q4_1 file on 2 cores, ~20 s unloaded)
    and writes the folder atomically; later calls, in any process, return it after hashing the file and
    verifying the folder (a folder that no longer verifies is converted again, and `progress` says why).
    `progress(fraction, message)` is called at each step when given. Problems with the file are NSAError.
    """
    report = progress or (lambda fraction, message: None)
    path = find_gguf(file)
    if path is not None:  # a cache hit needs only the hash (0.1 s), not the header (5 s for SmolLM2's vocabulary):
        report(0.0, f"hashing {path.name}")  # a file that was converted and verifies is a valid GGUF
        sha = gguf_sha256(path)
        target = converted_entry(cache_root, sha).folder
        if not conversion_problems(target, sha):
            report(1.0, f"already converted: {target}")
            return target
    report(0.02, "reading the GGUF header")
    info = inspect_gguf(file)
    sha = info.sha256
    entry = converted_entry(cache_root, sha)
    target = entry.folder
    problems = conversion_problems(target, sha)
    if not problems:
        report(1.0, f"already converted: {target}")
        return target
    if problems != ["missing"]:
        report(0.05, f"the converted model {target} is bad ({problems[0]}): converting it again")

    started = time.monotonic()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(info.path.parent), info.path.name
    what = f"{info.path} ({info.architecture}, {', '.join(info.tensor_types)})"
    tokenizer = None
    if info.tokenizer is not None:
        report(0.1, "building the tokenizer from the GGUF metadata")
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        except MemoryError:
            raise
        except Exception as err:
            raise NSAError(f"transformers could not build the tokenizer stored in {what} "
                           f"(tokenizer.ggml.model = {info.tokenizer!r}): {err}") from err

    report(0.2, f"dequantizing {info.n_parameters / 1e6:.1f}M parameters to float32")
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True, **_dequantize_kwargs())
    except MemoryError:
        raise
    except Exception as err:
        raise NSAError(f"transformers could not load the model in {what}: {type(err).__name__}: {err}") from err

    report(0.75, "building a plain float32 model")
    dense = _plain_model(model)
    del model
    _check_weights(dense, info.path)

    report(0.85, f"writing {target}")
    provenance = {
        "format": 1,
        "source": str(info.path),
        "file_name": info.path.name,
        "size": info.size,
        "sha256": sha,
        "architecture": info.architecture,
        "name": info.name,
        "tensor_types": info.tensor_types,
        "file_type": info.file_type,
        "gguf_parameters": info.n_parameters,
        "model_class": type(dense).__name__,
        "parameters": sum(p.numel() for p in dense.parameters()),
        "dtype": "float32",
        "tokenizer": tokenizer is not None,
        "converted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "conversion_seconds": None,
        "versions": _versions(),
    }
    try:
        with entry.build() as tmp:
            dense.save_pretrained(tmp)
            report(0.95, "writing the tokenizer and gguf.json")
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
            provenance["conversion_seconds"] = round(time.monotonic() - started, 2)
            (tmp / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=1) + "\n", encoding="utf-8")
            if is_converted(target, sha):  # a concurrent conversion of the same file won the race
                raise _AlreadyConverted
    except _AlreadyConverted:
        pass
    except OSError as err:
        raise NSAError(f"could not write the converted model to {target}: {err}") from err
    report(1.0, f"converted: {target}")
    return target


def _dequantize_kwargs() -> dict:
    """Ask for a fully dequantized model where transformers can keep GGUF blocks packed (its newer path, when
    the `kernels` package is installed); the default on the path our architectures take anyway."""
    try:
        from transformers import GgufConfig
    except ImportError:  # pragma: no cover - older transformers
        return {}
    try:
        return {"quantization_config": GgufConfig(dequantize=True)}
    except TypeError:  # pragma: no cover - a GgufConfig without `dequantize`
        return {}


def _plain_model(model):
    """A plain copy of the GGUF-loaded model that `save_pretrained` accepts.

    The loaded model keeps `config.quantization_config` (quant_method gguf) and its GGUF quantizer, and
    `save_pretrained` refuses it ("quantized with gguf and is not serializable"). Without the quantization
    config, a fresh model of the same class holding the same (already float32) state dict is a normal model.
    """
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = type(model)(config)
    dense.load_state_dict(model.state_dict(), strict=True)
    dense.generation_config = model.generation_config
    return dense.eval()


def _check_weights(model, path: Path) -> None:
    """Dequantized weights must be finite float32: NaN or inf means damaged tensor data (e.g. a bad scale)."""
    import torch
    for name, param in model.named_parameters():
        if param.dtype != torch.float32:
            raise NSAError(f"converting {path} gave {name} in {param.dtype}, not float32")  # pragma: no cover
        if not torch.isfinite(param).all():
            bad = int((~torch.isfinite(param)).sum())
            raise NSAError(f"{path} is corrupt: its tensor data dequantizes to {bad:,} NaN/inf values in "
                           f"{name}. Download or copy the file again")


def _versions() -> dict:
    import torch
    import transformers
    return {"transformers": transformers.__version__, "gguf": _gguf_version(), "torch": torch.__version__,
            "python": sys.version.split()[0]}
