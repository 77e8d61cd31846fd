"""The layout is the architecture: the two engines stay apart and the module map stays true."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import plait.providers.redis

ROOT = Path(__file__).resolve().parents[1]
REDIS = ROOT / "providers" / "plait" / "providers" / "redis"
PACKAGE = "plait.providers.redis"


def _imports(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (relative imports resolved)."""
    parts = list(path.relative_to(REDIS).with_suffix("").parts)
    package = [*PACKAGE.split("."), *parts[:-1]]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _engine_imports(engine: str) -> set[str]:
    found: set[str] = set()
    for path in (REDIS / engine).rglob("*.py"):
        found |= _imports(path)
    return found


def test_the_workflow_engine_never_imports_the_event_engine() -> None:
    leaks = {name for name in _engine_imports("_workflows") if f"{PACKAGE}._events" in name}
    assert leaks == set()


def test_the_event_engine_never_imports_the_workflow_engine() -> None:
    leaks = {name for name in _engine_imports("_events") if f"{PACKAGE}._workflows" in name}
    assert leaks == set()


def _documented_modules(text: str, indent: str) -> set[str]:
    """``_core/keys.py`` and the like, from a module map indented by ``indent``."""
    found: set[str] = set()
    folder = ""
    for line in text.splitlines():
        if match := re.match(rf"^{indent}(_[a-z]+)/ ", line):
            folder = match.group(1)
        elif match := re.match(rf"^{indent}  ([a-z_]+\.py) ", line):
            found.add(f"{folder}/{match.group(1)}")
    return found


def _modules() -> set[str]:
    return {
        str(path.relative_to(REDIS))
        for path in REDIS.rglob("*.py")
        if path.parent != REDIS and path.name != "__init__.py"
    }


def test_the_module_map_in_the_package_docstring_names_every_module() -> None:
    assert _documented_modules(plait.providers.redis.__doc__ or "", "    ") == _modules()


def test_the_module_map_in_the_development_docs_names_every_module() -> None:
    docs = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    assert _documented_modules(docs, "") == _modules()
