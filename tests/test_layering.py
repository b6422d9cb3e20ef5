"""The package's layers, as docs/architecture.md draws them: who may import whom.

Read from the source (every ``import``, at module level or inside a function, under
``TYPE_CHECKING`` too), so a lazy import that would pull the parent's side into a worker
fails here even if no test happens to run the path that imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "poolkit"

#: What runs in a worker process (the worker and the wire) never imports: the parent's side.
PARENT_SIDE = {
    "_pool",
    "_executor",
    "_executor_base",
    "_map",
    "_dask",
    "_lifecycle",
    "_run",
    "_error_messages",
}
#: Each layer, by the first name under ``poolkit``, and the layers it must never import. The
#: pool (the dispatcher thread) does not know which executor drives it. Start methods start
#: workers and know nothing of the pool that asks.
FORBIDDEN = {
    "_worker": PARENT_SIDE,
    "_wire": PARENT_SIDE,
    "_pickling": {"_pool", "_executor", "_executor_base", "_map", "_dask", "_lifecycle"},
    "_start_methods": {"_pool", "_executor", "_executor_base", "_map", "_dask", "_lifecycle"},
    "_pool": {"_executor", "_executor_base", "_map", "_dask", "_lifecycle", "_run"},
    "_error_notes": {"_errors", "_pool", "_executor", "_executor_base", "_map", "_dask"},
}
#: Modules of the wire layer that only the parent uses, and may import what the parent has.
PARENT_ONLY_WIRE = {"channel"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name == "poolkit" or name.startswith("poolkit.")}


def _modules() -> list[tuple[str, Path]]:
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        modules.append((name, path))
    return modules


@pytest.mark.parametrize(("module", "path"), _modules(), ids=lambda v: str(v))
def test_no_module_imports_a_layer_it_must_not(module: str, path: Path) -> None:
    layer = _layer(module)
    if layer == "_wire" and module.split(".")[-1] in PARENT_ONLY_WIRE:
        return
    forbidden = FORBIDDEN.get(layer, set())
    wrong = sorted(name for name in _imports(path) if _layer(name) in forbidden)
    assert not wrong, f"{module} ({layer}) imports {wrong}: see docs/architecture.md"


def test_the_worker_does_not_import_the_package_root() -> None:
    # ``import poolkit`` is light, but the worker must not depend on what it re-exports.
    for module, path in _modules():
        if _layer(module) in ("_worker", "_wire") and "poolkit" in _imports(path):
            pytest.fail(f"{module} imports the package root")


def test_every_layer_of_the_map_is_known() -> None:
    # A new subpackage gets its rules here and a line in docs/architecture.md.
    layers = {_layer(module) for module, _ in _modules()} - {""}
    known = set(FORBIDDEN) | {
        "_executor",
        "_executor_base",
        "_options",
        "_errors",
        "_error_messages",
        "_futures",
        "_lifecycle",
        "_thread_signals",
        "_map",
        "_dask",
        "_run",
        "bench",
        "__main__",
    }
    assert layers <= known, f"layers with no rule: {sorted(layers - known)}"
