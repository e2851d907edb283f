"""Declared options: a method (or a sparsity profile, or the NSA settings) lists its options once, and the CLI
flags, the app's form widgets, the job spec's checks and the defaults all come from that declaration."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pruners.errors import PruneError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One typed setting. `default=None` means "decided automatically" (e.g. NSA's n_ablate)."""

    name: str
    type: type
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    help: str = ""
    exclusive_min: bool = False  # `min` itself is not allowed (e.g. an FDR of 0)
    exclusive_max: bool = False

    def validate(self, value: Any) -> Any:
        """The typed value, or a PruneError whose text is "<name>: <what is wrong>, got <value>"."""
        typed, problem = self.check(value)
        if problem is not None:
            raise PruneError(f"{problem}, got {_quote(value)}", field=self.name)
        return typed

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(typed value, None), or (value, what is wrong). Strict: no silent truncation of 2.5 to an int, and a
        bool is true/false (or yes/no, on/off, 1/0 as text), never any other string read as False."""
        if value is None and self.default is None:
            return None, None
        if isinstance(value, (dict, list, tuple, set)) or value is None:
            return value, "expected a single value"
        if self.type is bool:
            if isinstance(value, bool):
                return value, None
            text = str(value).lower()
            if text in TRUE_WORDS + FALSE_WORDS:
                return text in TRUE_WORDS, None
            return value, "expected true or false"
        try:
            if isinstance(value, bool) and self.type is not str:
                raise ValueError
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            typed = self.type(value)
        except (TypeError, ValueError, OverflowError):
            return value, "expected " + {"int": "an integer", "float": "a number"}.get(self.type.__name__,
                                                                                    f"a {self.type.__name__}")
        if self.type is float and typed != typed:  # NaN passes every comparison below
            return value, "expected a number"
        if self.choices is not None and typed not in self.choices:
            return value, f"must be one of {', '.join(map(str, self.choices))}"
        if not self.in_range(typed):
            return value, self.range_text()
        return typed, None

    def in_range(self, typed: Any) -> bool:
        if self.min is not None and (typed < self.min or self.exclusive_min and typed == self.min):
            return False
        return not (self.max is not None and (typed > self.max or self.exclusive_max and typed == self.max))

    def range_text(self) -> str:
        """The allowed range in words ("" when unbounded)."""
        lo = None if self.min is None else ("above " if self.exclusive_min else "at least ") + f"{self.min:g}"
        hi = None if self.max is None else ("below " if self.exclusive_max else "at most ") + f"{self.max:g}"
        if lo and hi:
            return f"must be {lo} and {hi}"
        return f"must be {lo or hi}" if (lo or hi) else ""


def resolve_options(declared: tuple[Option, ...] | list[Option], given: dict | None, owner: str,
                    prefix: str = "options.") -> dict:
    """Declared defaults overlaid with the validated `given` values, sorted by name (so equal settings compare
    and hash equal); an unknown name is a PruneError listing the known ones. Errors name the field
    `prefix + option name`."""
    if given is not None and not isinstance(given, dict):
        raise PruneError(f"expected a mapping of {owner} options, got {_quote(given)}", field=prefix.rstrip("."))
    given = dict(given or {})
    known = {o.name: o for o in declared}
    unknown = sorted(map(str, (k for k in given if k not in known)))
    if unknown:
        raise PruneError(f"unknown option for {owner} (its options: {', '.join(sorted(known)) or 'none'})",
                         field=prefix + unknown[0])
    out = {}
    for name in sorted(known):
        try:
            out[name] = known[name].validate(given[name]) if name in given else known[name].default
        except PruneError as err:
            raise err.nested(prefix) from None
    return out


def check_section(data: Any, allowed: set[str], required: str, hint: str) -> dict:
    """A config section given as a mapping: only `allowed` keys, `required` present (PruneError naming the key)."""
    if not isinstance(data, dict):
        raise PruneError(f"expected a mapping with {', '.join(sorted(allowed))}; got {_quote(data)}")
    unknown = sorted(map(str, set(data) - allowed))
    if unknown:
        raise PruneError(f"unknown key (allowed here: {', '.join(sorted(allowed))})", unknown[0])
    if data.get(required) is None:
        raise PruneError(f"missing ({hint})", required)
    return data


def _quote(value: Any, limit: int = 80) -> str:
    """repr of a user value, capped: an error message never quotes a huge input whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"
