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
        try:
            value = self.type(value) if not (self.type is bool and isinstance(value, str)) else \
                value.lower() in ("1", "true", "yes", "on")
        except (TypeError, ValueError):
            raise PruneError(f"option {self.name}={value!r} is not a {self.type.__name__}: {self.help}")
        if self.choices is not None and value not in self.choices:
            raise PruneError(f"option {self.name}={value!r} must be one of {', '.join(map(str, self.choices))}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise PruneError(f"option {self.name}={value!r} outside [{self.min}, {self.max}]: {self.help}")
        return value


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
