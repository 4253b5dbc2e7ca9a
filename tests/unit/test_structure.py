"""The package layout's rules, checked on the source: dependencies point one way, no import
circles (lazy imports inside functions count too), each room imports only what it may."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schedulers", "auth", "gateway")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its text."""
    modules = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    found.add(target)
        graph[name] = found
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its own submodules is how packages re-export.
            if node == nxt.rsplit(".", 1)[0] and nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles() -> None:
    assert _cycle(_imports()) is None, f"import circle: {' -> '.join(_cycle(_imports()) or [])}"


def test_circle_finder_finds_a_circle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def _violations(may_not: dict[str, tuple[str, ...]]) -> list[str]:
    bad = []
    for module, targets in _imports().items():
        for room, forbidden in may_not.items():
            if module == room or module.startswith(room + "."):
                bad += [f"{module} imports {t}" for t in targets
                        if any(t == f or t.startswith(f + ".") for f in forbidden)]
    return bad


def test_dependencies_point_one_way() -> None:
    assert _violations({
        "schedulers": ("gateway", "auth"),
        "auth": ("gateway", "schedulers"),
        # The job side runs on compute nodes: it never needs the hub's or the admin's code.
        "gateway.job": ("gateway.hub", "gateway.admin", "gateway.lab", "gateway.policy"),
        "gateway.policy": ("gateway.hub", "gateway.job", "gateway.admin", "gateway.lab"),
        "gateway.hub": ("gateway.admin", "gateway.lab"),
        "gateway.tunnel": ("gateway.hub", "gateway.admin", "gateway.lab"),
        "gateway.depots": ("gateway.hub", "gateway.lab"),
    }) == []


def test_importing_the_spawner_registers_no_handler() -> None:
    import subprocess
    import sys

    code = ("import gateway.hub.spawner, gateway.hub.api, gateway.hub.depots_page\n"
            "from gateway.hub import handlers_installed\n"
            "print(handlers_installed())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         check=True).stdout.strip()
    assert out == "False"
