"""Reading the text files users hand us (datasets, word lists, calibration texts, specs): UTF-8, a byte-order
mark accepted, anything else refused with the file and the byte at fault, never a UnicodeDecodeError."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import yaml

from nsa.errors import NSAError

MAX_BYTES = 2 << 30  # a text file this tool reads whole: 2 GiB is far past any real dataset or word list


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text (UTF-8, with or without a byte-order mark)."""
    path = Path(path)
    if not path.is_file():
        raise NSAError(f"{what} {path} does not exist")
    size = path.stat().st_size
    if size > MAX_BYTES:
        raise NSAError(f"{what} {path} is {size / 2**30:.1f} GiB: too large to read as text")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NSAError(f"{what} {path} is not UTF-8 text (byte {err.start}, line {line}: "
                       f"{data[err.start:err.start + 4]!r}): save it as UTF-8") from None


def open_text(path: str | Path, what: str = "file") -> io.StringIO:
    """`read_text` as a file object (for csv readers), newlines kept as in the file."""
    return io.StringIO(read_text(path, what), newline="")


def safe_yaml(text: str, source: str = "<spec>") -> Any:
    """YAML with the dangers refused: tags that build objects (safe_load), duplicate keys, and documents whose
    aliases expand far beyond the text (an alias bomb)."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as err:
        raise NSAError(f"{source} is not valid YAML: {str(err)[:500]}") from None
    if node is None:
        return None
    check_expansion(node, source, len(text), duplicates=True)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise NSAError(f"{source} is not valid YAML: {str(err)[:500]}") from None


def check_expansion(node, source: str, text_length: int, duplicates: bool = False) -> None:
    """Refuse documents whose aliases expand far beyond their text (an alias bomb) or nest too deep; with
    `duplicates`, also a key given twice in one mapping."""
    _check_node(node, source, [max(10_000, 20 * text_length)], 0, duplicates)


def _check_node(node, source: str, budget: list[int], seen_depth: int, duplicates: bool) -> None:
    """Walk the composed document counting every node as expanded (aliases re-count their target)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise NSAError(f"{source}: the document expands to far more data than its text (YAML aliases): refused")
    if seen_depth > 100:
        raise NSAError(f"{source}: nested more than 100 levels deep")
    if isinstance(node, yaml.MappingNode):
        keys = set()
        for k, v in node.value:
            key = getattr(k, "value", None)
            if duplicates and isinstance(key, str) and key in keys:
                raise NSAError(f"{source} line {k.start_mark.line + 1}: key {key!r} appears twice")
            keys.add(key)
            _check_node(k, source, budget, seen_depth + 1, duplicates)
            _check_node(v, source, budget, seen_depth + 1, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for v in node.value:
            _check_node(v, source, budget, seen_depth + 1, duplicates)
