"""The arrows between the parts (docs/architecture.md), checked on the source so they cannot rot.

Every import counts: at module level, under TYPE_CHECKING and inside functions, because an
import hidden in a function is still a dependency, and the way cycles used to be broken.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "agentcomm"

# What the pure layers may never import: the bus, the server, and every I/O library.
IO_LIBRARIES = (
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "aio_pika",
    "aiormq",
    "pamqp",
    "fastapi",
    "starlette",
    "uvicorn",
    "websockets",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for path in PACKAGE.rglob("*.py")
        if "generated" not in path.relative_to(PACKAGE).parts
    }


MODULES = _modules()


def _imports(name: str) -> Iterator[str]:
    """Every module `name` imports, resolved to the most specific module that exists."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                yield submodule if submodule in MODULES else target


def _internal_graph() -> dict[str, set[str]]:
    return {
        name: {imported for imported in _imports(name) if imported in MODULES and imported != name}
        for name in MODULES
    }


def _is_under(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def _violations(layer: str, allowed: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for name in sorted(MODULES):
        if not _is_under(name, layer):
            continue
        for imported in _imports(name):
            internal = _is_under(imported, "agentcomm")
            if (internal and not _is_under(imported, *allowed)) or _is_under(imported, *forbidden):
                found.append(f"{name} imports {imported}")
    return found


def test_the_modules_are_found() -> None:
    assert "agentcomm.core.routing.router" in MODULES
    assert "agentcomm.server.lifecycle.hub" in MODULES
    assert "agentcomm.core.presence_views" in _internal_graph()["agentcomm.core.routing.router"]


def test_protocol_imports_nothing_but_itself() -> None:
    assert _violations("agentcomm.protocol", ("agentcomm.protocol",), IO_LIBRARIES) == []


def test_core_imports_only_the_protocol_and_itself() -> None:
    allowed = ("agentcomm.protocol", "agentcomm.core")
    assert _violations("agentcomm.core", allowed, IO_LIBRARIES) == []


def test_history_knows_only_its_database_and_the_protocol() -> None:
    # The store is lent to the server, never the other way round: no bus, no server, no core.
    allowed = ("agentcomm.protocol", "agentcomm.history")
    assert _violations("agentcomm.history", allowed, IO_LIBRARIES) == []


@pytest.mark.parametrize("client", ["agentcomm.sdk", "agentcomm.broker", "agentcomm.gateways"])
def test_clients_of_the_hub_never_import_the_server(client: str) -> None:
    found = [
        f"{name} imports {imported}"
        for name in sorted(MODULES)
        if _is_under(name, client)
        for imported in _imports(name)
        if _is_under(imported, "agentcomm.server")
    ]
    assert found == []


def test_the_server_adapters_are_not_lent_the_hub() -> None:
    adapters = ("agentcomm.server.ws", "agentcomm.server.grpc", "agentcomm.server.http")
    found = [
        f"{name} imports {imported}"
        for name in sorted(MODULES)
        if _is_under(name, *adapters)
        for imported in _imports(name)
        if _is_under(imported, "agentcomm.server.lifecycle")
    ]
    assert found == []


def test_there_are_no_import_cycles() -> None:
    graph = _internal_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph[module]):
            if state.get(imported) == 1:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
