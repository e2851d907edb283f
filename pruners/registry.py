"""The method registry: one entry per name, filled from `pruners.methods`; a second registration under a taken
name is refused (as lm-evaluation-harness's registry does), so no method silently replaces another."""
from __future__ import annotations

from pruners.errors import PruneError
from pruners.method import Method
from pruners.methods import METHODS


class Registry:
    def __init__(self, methods: tuple[Method, ...] = ()):
        self._methods: dict[str, Method] = {}
        for method in methods:
            self.register(method)

    def register(self, method: Method) -> Method:
        if method.name in self._methods:
            raise PruneError(f"a pruning method named {method.name!r} is already registered")
        self._methods[method.name] = method
        return method

    def get(self, name: str) -> Method:
        if name not in self._methods:
            raise PruneError(f"unknown pruning method {name!r}: registered methods are "
                             f"{', '.join(self.names())}", "method")
        return self._methods[name]

    def names(self) -> list[str]:
        return sorted(self._methods)


REGISTRY = Registry(METHODS)


def get_method(name: str) -> Method:
    return REGISTRY.get(name)


def list_methods() -> list[str]:
    return REGISTRY.names()
