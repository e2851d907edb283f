"""The one description of a pruning setup (`PruneConfig`), validated once, here, on construction; its result
(`PruneResult`); the progress event every long step in the project reports (`ProgressEvent`).

The job spec embeds a `PruneConfig`; the CLI flags, the app's form and a study's grid all build one, so a
bad value gets the same message everywhere (`PruneError.at` names the field the caller's way).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pruners.errors import PruneError
from pruners.options import check_section, resolve_options
from pruners.registry import get_method

UNSTRUCTURED = "unstructured"
COMMON_PATTERNS = (UNSTRUCTURED, "2:4", "4:8")  # what forms offer; the grammar takes any N:M


@dataclass(frozen=True)
class ProgressEvent:
    """What progress callbacks receive everywhere: the fraction done (0..1), a message, and the stage."""

    fraction: float
    message: str = ""
    stage: str = ""


def parse_pattern(pattern: Any) -> tuple[int, int] | None:
    """None for "unstructured", (N, M) for "N:M" (N of every M consecutive inputs pruned); bad → PruneError."""
    text = normalise_pattern(pattern)
    if text == UNSTRUCTURED:
        return None
    n, m = text.split(":")
    return int(n), int(m)


def normalise_pattern(pattern: Any) -> str:
    """"unstructured" or "N:M" with 0 < N < M, spaces and case ignored ("2 : 4" → "2:4")."""
    text = str(pattern).strip().lower().replace(" ", "") if isinstance(pattern, str) else None
    if text == UNSTRUCTURED:
        return text
    parts = (text or "").split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts) and 0 < int(parts[0]) < int(parts[1]):
        return f"{int(parts[0])}:{int(parts[1])}"
    raise PruneError(f"expected 'unstructured' or 'N:M' with 0 < N < M (e.g. 2:4), got {pattern!r}", "pattern")


def validate_sparsity(sparsity: Any) -> float:
    if isinstance(sparsity, bool):
        raise PruneError(f"expected a fraction in [0, 1), got {sparsity!r}", "sparsity")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise PruneError(f"expected a fraction in [0, 1), got {sparsity!r}", "sparsity") from None
    if not 0.0 <= s < 1.0:  # NaN fails too
        raise PruneError(f"must be in [0, 1) (the fraction of weights to prune, e.g. 0.5), got {s}", "sparsity")
    return s


@dataclass(frozen=True)
class PruneConfig:
    """Method, sparsity, pattern and the method's options, validated and normalised on construction: the method
    name is looked up in the registry, options are checked against its declarations and completed with their
    defaults, and an N:M pattern fixes the sparsity at N/M (so one computation has one config)."""

    method: str
    sparsity: float = 0.5
    pattern: str = UNSTRUCTURED
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method.strip():
            raise PruneError(f"expected a method name, got {self.method!r}", "method")
        method = get_method(self.method.strip().lower())
        pattern = normalise_pattern(self.pattern)
        sparsity = validate_sparsity(self.sparsity)
        nm = parse_pattern(pattern)
        if nm is not None:
            sparsity = nm[0] / nm[1]
        object.__setattr__(self, "method", method.name)
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "options", resolve_options(method.options, self.options, f"method {method.name}"))

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    def to_dict(self) -> dict:
        return {"method": self.method, "sparsity": self.sparsity, "pattern": self.pattern,
                "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Any) -> "PruneConfig":
        """From a mapping such as a job spec's `prune:` section; unknown keys are a PruneError."""
        check_section(data, {"method", "sparsity", "pattern", "options"}, "method", "e.g. magnitude, wanda, sparsegpt")
        return cls(method=data["method"], sparsity=data.get("sparsity", 0.5),
                   pattern=data.get("pattern", UNSTRUCTURED), options=data.get("options") or {})


@dataclass
class PruneResult:
    masks: dict  # {param name: uint8 tensor, param shape, 1 = pruned}
    stats: dict
    weights: dict | None = None  # {param name: tensor} when the method changed kept weights (SparseGPT, RIA perm.)
