"""The package layout's rules, checked on the source: imports point one way (`pruners` ← `nsa` ← `nsa_app` ←
`pages/`), there is no import circle, the project's own imports sit at module top, and `import nsa` (and every
module of the library) opens no network connection."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

LAYERS = {"pruners": 0, "nsa": 1, "nsa_app": 2, "pages": 3, "app": 3}
FORBIDDEN = {"pruners": ("nsa", "nsa_app", "pages", "streamlit"), "nsa": ("nsa_app", "pages", "streamlit")}


def _modules() -> dict[str, Path]:
    out = {}
    for top in ("pruners", "nsa", "nsa_app", "pages"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    out["app"] = ROOT / "app.py"
    return out


MODULES = _modules()


def _targets(node: ast.AST, module: str) -> list[str]:
    """Project modules (or external top-level packages) an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:  # relative import: resolve against the module's package
        base = module.split(".")[: -node.level] if not MODULES[module].name == "__init__.py" else \
            module.split(".")[: len(module.split(".")) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    out = []
    for alias in node.names:
        candidate = f"{prefix}.{alias.name}"
        out.append(candidate if candidate in MODULES else prefix)
    return out


def _imports() -> tuple[dict[str, set[str]], list[str]]:
    """(module-level edges between project modules, and external packages too; function-level project imports)"""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    inside: list[str] = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = set(id(n) for n in tree.body)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _targets(node, module):
                if id(node) in top_level:
                    edges[module].add(target)
                elif target.split(".")[0] in LAYERS:
                    inside.append(f"{module} (line {node.lineno}) imports {target} inside a function")
    return edges, inside


def test_imports_point_one_way():
    edges, _ = _imports()
    wrong = []
    for module, targets in edges.items():
        layer = module.split(".")[0]
        for target in targets:
            top = target.split(".")[0]
            if top in FORBIDDEN.get(layer, ()) or (top in LAYERS and LAYERS[top] > LAYERS[layer]):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_circles():
    edges, _ = _imports()
    graph = {m: {t for t in ts if t in MODULES and t != m} for m, ts in edges.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_project_imports_are_at_module_top():
    _, inside = _imports()
    assert inside == []


def test_the_rules_are_not_vacuous():
    """The checker sees real edges: nsa imports pruners, the app imports nsa."""
    edges, _ = _imports()
    assert "pruners" in edges["nsa.jobs.spec"] and "nsa.jobs.submit" in edges["nsa_app.ui"] and "nsa_app.ui" in edges["pages.run"]
    assert len(MODULES) > 60


@pytest.mark.parametrize("modules", [["nsa"], sorted(m for m in MODULES if m.split(".")[0] in ("nsa", "pruners") and m != "nsa.__main__")])
def test_importing_the_library_touches_no_network(modules):
    code = ("import socket\n"
            "def refuse(*a, **k):\n    raise SystemExit('network: ' + repr(a[:1]))\n"
            "socket.create_connection = refuse\nsocket.socket.connect = refuse\n"
            "import importlib, os\nos.environ.pop('HF_HUB_OFFLINE', None)\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
