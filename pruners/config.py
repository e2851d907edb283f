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
from pruners.profiles import UNIFORM, get_profile
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
    """Method, sparsity, pattern, sparsity profile and their options, validated and normalised on construction:
    the method and profile names are looked up in their registries, options are checked against their
    declarations and completed with their defaults, and an N:M pattern fixes the sparsity at N/M (so one
    computation has one config).

    `sparsity_profile` spreads the sparsity over the decoder layers (`pruners.profiles`: "uniform" or "owl");
    structured methods take neither an N:M pattern nor a non-uniform profile, and OWL takes no N:M pattern.
    `to_dict` leaves the profile keys out when the profile is uniform (so specs written before profiles existed
    keep their run ids) and `from_dict` reads a missing profile as uniform.
    """

    method: str
    sparsity: float = 0.5
    pattern: str = UNSTRUCTURED
    options: dict = field(default_factory=dict)
    sparsity_profile: str = UNIFORM
    profile_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method.strip():
            raise PruneError(f"expected a method name, got {self.method!r}", "method")
        method = get_method(self.method.strip().lower())
        pattern = normalise_pattern(self.pattern)
        sparsity = validate_sparsity(self.sparsity)
        profile = get_profile(self.sparsity_profile)
        nm = parse_pattern(pattern)
        if nm is not None:
            if method.structured:
                raise PruneError(f"{method.name} is a structured method (it removes whole units); N:M patterns "
                                 "apply to unstructured methods only: use pattern unstructured", "pattern")
            if not profile.nm:
                raise PruneError(f"{profile.name.upper()} layer-wise sparsity is not defined for N:M patterns "
                                 f"(every layer prunes exactly {nm[0]} of {nm[1]}): use sparsity_profile uniform "
                                 "or pattern unstructured", "sparsity_profile")
            sparsity = nm[0] / nm[1]
        if method.structured and profile.name != UNIFORM:
            raise PruneError(f"sparsity profile {profile.name} sets per-layer sparsities for unstructured methods; "
                             f"{method.name} is structured: use sparsity_profile uniform", "sparsity_profile")
        object.__setattr__(self, "method", method.name)
        object.__setattr__(self, "pattern", pattern)
        object.__setattr__(self, "sparsity", sparsity)
        object.__setattr__(self, "options", resolve_options(method.options, self.options, f"method {method.name}"))
        object.__setattr__(self, "sparsity_profile", profile.name)
        object.__setattr__(self, "profile_options", resolve_options(
            profile.options, self.profile_options, f"sparsity profile {profile.name}", prefix="profile_options."))

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        """Whether pruning reads calibration data: the method's or the profile's (magnitude + OWL does)."""
        return get_method(self.method).needs_calibration or get_profile(self.sparsity_profile).needs_calibration

    def to_dict(self) -> dict:
        out = {"method": self.method, "sparsity": self.sparsity, "pattern": self.pattern,
               "options": dict(self.options)}
        if self.sparsity_profile != UNIFORM:
            out |= {"sparsity_profile": self.sparsity_profile, "profile_options": dict(self.profile_options)}
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "PruneConfig":
        """From a mapping such as a job spec's `prune:` section; unknown keys are a PruneError."""
        check_section(data, {"method", "sparsity", "pattern", "options", "sparsity_profile", "profile_options"},
                      "method", "e.g. magnitude, wanda, sparsegpt")
        return cls(method=data["method"], sparsity=data.get("sparsity", 0.5),
                   pattern=data.get("pattern", UNSTRUCTURED), options=data.get("options") or {},
                   sparsity_profile=data.get("sparsity_profile") or UNIFORM,
                   profile_options=data.get("profile_options") or {})
