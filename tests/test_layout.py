"""The boundaries the README promises, read from the source: every import arrow points down —
applications (``apps``) → the contract (``pipeline``) ← backends (``inmemory``, ``durable``); the
contract imports neither; a backend imports no application and no other backend; only the chooser
names a backend. No import cycles (type-only imports included), no module imports another's
private names."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "inmemory", "durable", "apps")
BACKENDS = ("inmemory", "durable")
APPS = "apps"
CONTRACT = "pipeline"
CHOOSER = "apps.cli.chooser"


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> Iterator[tuple[str, str | None]]:
    """(module, imported name or None) for every absolute import in ``path``, wherever it sits
    (inside functions and ``if TYPE_CHECKING:`` blocks too)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def edges() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for module, imported in imports(path):
            target = f"{module}.{imported}" if f"{module}.{imported}" in mods else module
            if target in mods and target != name:
                graph[name].add(target)
    return graph


def arrows(source: str, targets: tuple[str, ...]) -> list[str]:
    """Every import from a module of package ``source`` into one of the ``targets`` packages."""
    return [
        f"{name} imports {module}"
        for name, path in modules().items()
        if name.split(".")[0] == source
        for module, _ in imports(path)
        if module.split(".")[0] in targets
    ]


def test_only_the_chooser_imports_a_backend() -> None:
    """Nothing in apps/ but the chooser imports inmemory or durable."""
    offenders = [a for a in arrows(APPS, BACKENDS) if not a.startswith(f"{CHOOSER} ")]
    assert offenders == []
    assert arrows(APPS, BACKENDS), "the chooser names the backends"


def test_the_contract_imports_no_application_and_no_backend() -> None:
    """pipeline/ (the contract, with its fetch side) never imports apps, inmemory or durable."""
    assert arrows(CONTRACT, (APPS, *BACKENDS)) == []


def test_a_backend_imports_no_application_and_no_other_backend() -> None:
    """inmemory and durable import the contract only: never apps, never each other."""
    assert arrows("inmemory", (APPS, "durable")) == []
    assert arrows("durable", (APPS, "inmemory")) == []


def test_the_contract_package_holds_no_application() -> None:
    """The service, the CLI, the demo and the harness live in apps/, not in pipeline/."""
    for app in ("service", "cli", "demo", "harness"):
        assert not (ROOT / CONTRACT / app).exists(), f"{CONTRACT}/{app} is an application"
        assert (ROOT / APPS / app / "__init__.py").exists()


def test_no_module_imports_a_private_name_of_another() -> None:
    """``from x import _y`` across modules is a leak of x's internals."""
    mods = modules()
    offenders = [
        f"{name}: from {module} import {imported}"
        for name, path in mods.items()
        for module, imported in imports(path)
        if imported and imported.startswith("_") and module in mods and module != name
    ]
    assert offenders == []


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first module repeated at the end), or [] if there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(v: str) -> list[str]:
        if v in path:
            return [*path[path.index(v) :], v]
        if v in done:
            return []
        path.append(v)
        for w in sorted(graph[v]):
            cycle = visit(w)
            if cycle:
                return cycle
        path.pop()
        done.add(v)
        return []

    for v in sorted(graph):
        cycle = visit(v)
        if cycle:
            return cycle
    return []


def test_no_import_cycles() -> None:
    """The module graph is acyclic, type-only imports included."""
    assert find_cycle(edges()) == []


def test_only_the_service_metrics_module_imports_prometheus() -> None:
    """The histogram's storage format is backend-neutral; Prometheus is the service's business."""
    users = sorted(
        name
        for name, path in modules().items()
        for module, _ in imports(path)
        if module.startswith("prometheus_client")
    )
    assert set(users) == {"apps.service.metrics"}
