"""The import rules that keep the layers honest."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "fleetkeep"

# What the agent may import from fleetkeep: itself, the backup engine and key derivation,
# which carry no server code. Anything else would drag the server onto every laptop.
AGENT_MAY_IMPORT = ("fleetkeep.agent", "fleetkeep.backup", "fleetkeep.keys.subkeys", "fleetkeep")
SERVER_ONLY_THIRD_PARTY = ("fastapi", "starlette", "sqlalchemy", "alembic", "uvicorn")
SERVER_MODULES_IN_ENGINE = ("models", "service", "api", "schemas", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    module = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.rsplit(".", node.level)[0]
                found.add(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _file_of(module: str) -> Path | None:
    path = SRC / Path(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _closure(start: list[Path]) -> dict[str, set[str]]:
    """Every fleetkeep module reachable from ``start`` → the modules it imports."""
    graph: dict[str, set[str]] = {}
    todo = list(start)
    while todo:
        path = todo.pop()
        name = _module_name(path)
        if name in graph:
            continue
        graph[name] = _imports(path)
        for imported in graph[name]:
            if imported.startswith("fleetkeep"):
                target = _file_of(imported)
                if target is not None and _module_name(target) not in graph:
                    todo.append(target)
    return graph


def test_the_agent_imports_nothing_from_the_server() -> None:
    graph = _closure(sorted((PKG / "agent").rglob("*.py")))
    assert "fleetkeep.agent.cli" in graph
    for module, imports in graph.items():
        assert module.startswith(AGENT_MAY_IMPORT), f"the agent reaches {module}"
        if module.startswith("fleetkeep.backup"):
            assert module.rsplit(".", 1)[-1] not in SERVER_MODULES_IN_ENGINE, module
        for imported in imports:
            assert not imported.startswith(SERVER_ONLY_THIRD_PARTY), f"{module} imports {imported}"


def test_service_modules_never_import_the_web_framework() -> None:
    services = sorted(PKG.rglob("service.py")) + sorted(PKG.rglob("services.py"))
    assert services
    for path in services:
        for imported in _imports(path):
            assert not imported.startswith(("fastapi", "starlette", "fleetkeep.web")), (
                f"{path.relative_to(SRC)} imports {imported}"
            )
