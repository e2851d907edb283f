"""Method registry: each pruning method declares its options and needs in one place (CLI/app forms use it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pruners.errors import PruneError

NEEDS = ("activations", "hessian", "gradients")


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    help: str = ""

    def validate(self, value: Any) -> Any:
        """The typed value, or PruneError naming the option and what is wrong."""
        typed, problem = self.check(value)
        if problem is not None:
            if self.range_text() and problem == self.range_text():
                problem = f"is outside the allowed range: it {problem}"
            raise PruneError(f"option {self.name}={value!r}: {problem}" + (f" ({self.help})" if self.help else ""))
        return typed

    def check(self, value: Any) -> tuple[Any, str | None]:
        """(typed value, None), or (value, what is wrong). Strict: no silent truncation of 2.5 to an int, and a
        bool is true/false (or yes/no, on/off, 1/0 as text), never any other string read as False."""
        if self.type is bool:
            if isinstance(value, bool):
                return value, None
            text = str(value).lower()
            if text in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                return text in ("1", "true", "yes", "on"), None
            return value, "expected true or false"
        try:
            if self.type is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            typed = self.type(value) if not isinstance(value, bool) or self.type is str else None
            if typed is None:
                raise ValueError
        except (TypeError, ValueError):
            return value, "expected " + {"int": "an integer", "float": "a number"}.get(self.type.__name__,
                                                                                    f"a {self.type.__name__}")
        if self.choices is not None and typed not in self.choices:
            return value, f"must be one of {', '.join(map(str, self.choices))}"
        if self.min is not None and typed < self.min or self.max is not None and typed > self.max:
            return value, self.range_text()
        return typed, None

    def range_text(self) -> str:
        if self.min is None and self.max is None:
            return ""
        if self.min is not None and self.max is not None:
            return f"must be between {self.min:g} and {self.max:g}"
        return f"must be at least {self.min:g}" if self.min is not None else f"must be at most {self.max:g}"


def group_options(default_group: str) -> list[Option]:
    """Comparison-group options shared by every method."""
    return [
        Option("group", str, default_group, choices=("row", "layer", "block"),
               help="which weights compete in unstructured mode: per output row, whole layer, or column block"),
        Option("block_size", int, 128, min=1, help="columns per block when group=block"),
    ]


@dataclass(frozen=True)
class Method:
    name: str
    prune: Callable  # prune(W [out,in] float32, stats: ModuleStats, ctx: PruneContext) -> (mask bool, W_new|None)
    options: list[Option] = field(default_factory=list)
    needs: tuple[str, ...] = ()
    help: str = ""

    def resolve_options(self, given: dict | None) -> dict:
        """Declared defaults overlaid with validated `given`; unknown option → PruneError."""
        given = dict(given or {})
        known = {o.name: o for o in self.options}
        unknown = [k for k in given if k not in known]
        if unknown:
            raise PruneError(f"method {self.name!r} has no option(s) {unknown}: its options are {sorted(known)}")
        return {name: (opt.validate(given[name]) if name in given else opt.default) for name, opt in known.items()}


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def _load_builtin() -> None:
    from pruners import gblm, magnitude, ria, sparsegpt, wanda  # noqa: F401  (each registers itself)


def list_methods() -> list[str]:
    _load_builtin()
    return sorted(_METHODS)


def get_method(name: str) -> Method:
    _load_builtin()
    if name not in _METHODS:
        raise PruneError(f"unknown pruning method {name!r}: registered methods are {', '.join(sorted(_METHODS))}")
    return _METHODS[name]
