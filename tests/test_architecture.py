"""Rules of the package's shape, read from the source with ``ast`` (nothing is imported).

- Every Stripe SDK call is in ``services/stripe_gateway.py``: no other module imports
  ``stripe`` or calls dj-stripe's methods that reach Stripe. The fake Stripe API and
  the SDK set-up for tests (``kernia_billing/testing/``) are exempt.
- No import circles among module-level imports of ``kernia_billing``. Imports inside
  functions are allowed only where listed in ``ALLOWED_IN_FUNCTION_IMPORTS``.

``python -m tests.test_architecture`` prints the graph's in-function imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "kernia_billing"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
GATEWAY = "kernia_billing.services.stripe_gateway"
EXEMPT_PREFIXES = ("kernia_billing.testing",)

#: dj-stripe (and SDK) methods that may call Stripe on our behalf.
STRIPE_REACHING_METHODS = frozenset(
    {
        "sync_from_stripe_data",
        "api_retrieve",
        "api_list",
        "_api_create",
        "_api_update",
        "_api_delete",
        "construct_from",
        "auto_paging_iter",
    }
)

#: In-function imports of kernia_billing modules that stay, and why.
ALLOWED_IN_FUNCTION_IMPORTS = {
    # App start-up: receivers and checks are registered once the registry is ready.
    ("kernia_billing.apps", "kernia_billing.webhooks"),
    ("kernia_billing.apps", "kernia_billing.checks"),
    ("kernia_billing.apps", "kernia_billing.services"),
    ("kernia_billing.apps", "kernia_billing.services.stripe_gateway"),
    # Decorators are imported by a project's views modules; the services they call
    # import models, which must wait for the app registry (like the lazy public API).
    ("kernia_billing.decorators", "kernia_billing.services"),
    ("kernia_billing.decorators", "kernia_billing.services.usage"),
    ("kernia_billing.decorators", "kernia_billing.services.usage.check"),
    ("kernia_billing.decorators", "kernia_billing.services.usage.track"),
    ("kernia_billing.decorators", "kernia_billing.services.usage.validation"),
    # The pytest plugin imports kernia_billing.testing before Django is set up; the
    # override helpers reach models and services only when a test uses them.
    ("kernia_billing.testing.overrides", "kernia_billing.models"),
    ("kernia_billing.testing.overrides", "kernia_billing.services"),
    ("kernia_billing.testing.overrides", "kernia_billing.services.customers"),
    # The fake's contract builder walks the fake's routes when it runs; the server
    # imports the contract's validator, so a module-level import would be a circle.
    (
        "kernia_billing.testing.fake_stripe.contract.build",
        "kernia_billing.testing.fake_stripe.server",
    ),
}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """Absolute names a statement imports (a ``from x import y`` names both x and x.y)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".")
        if not _is_package(path):
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_imports(tree: ast.Module) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(module-level imports, in-function imports); TYPE_CHECKING blocks are neither."""
    top: list[ast.stmt] = []
    nested: list[ast.stmt] = []

    def visit(parent: ast.AST, in_function: bool) -> None:
        for node in ast.iter_child_nodes(parent):
            if isinstance(node, ast.Import | ast.ImportFrom):
                (nested if in_function else top).append(node)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                continue
            else:
                is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                visit(node, in_function or is_function)

    visit(tree, False)
    return top, nested


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """``(module-level edges, in-function edges)`` between kernia_billing modules."""
    modules = _modules()
    top_edges: dict[str, set[str]] = {m: set() for m in modules}
    nested_edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top, nested = _walk_imports(tree)
        for edges, nodes in ((top_edges, top), (nested_edges, nested)):
            for node in nodes:
                for name in _imported(module, path, node):  # type: ignore[arg-type]
                    # Importing a.b.c runs a, a.b and a.b.c (the importer's own
                    # ancestors are already running, so they are not edges).
                    parts = name.split(".")
                    for i in range(1, len(parts) + 1):
                        target = ".".join(parts[:i])
                        if (
                            target in modules
                            and target != module
                            and not module.startswith(target + ".")
                        ):
                            edges[module].add(target)
    return top_edges, nested_edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                found.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_import_circles_among_module_level_imports():
    top, _ = import_graph()
    assert _cycles(top) == []


def test_in_function_imports_of_our_own_modules_are_the_listed_ones():
    _, nested = import_graph()
    found = {(m, t) for m, targets in nested.items() for t in targets}
    assert found - ALLOWED_IN_FUNCTION_IMPORTS == set()


def test_every_stripe_call_is_in_the_gateway():
    offences = []
    for module, path in _modules().items():
        if module == GATEWAY or module.startswith(EXEMPT_PREFIXES):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                names = []
            if any(name == "stripe" or name.startswith("stripe.") for name in names):
                offences.append(f"{module}:{node.lineno} imports the Stripe SDK")
            if isinstance(node, ast.Attribute) and node.attr in STRIPE_REACHING_METHODS:
                offences.append(f"{module}:{node.lineno} calls {node.attr}")
    assert offences == [], "Stripe calls belong in services/stripe_gateway.py"


if __name__ == "__main__":
    _, nested_edges = import_graph()
    for source, targets in sorted(nested_edges.items()):
        for target in sorted(targets):
            print(f"{source} -> {target} (in a function)")


def test_api_views_use_the_apps_extend_schema():
    """drf-spectacular's own ``extend_schema`` builds on the host's DEFAULT_SCHEMA_CLASS;
    the app's views use ``api.schema.extend_schema`` so no project-wide setting is needed."""
    offenders = []
    for path in sorted((ROOT / "api").glob("*.py")):
        if path.name == "schema.py":
            continue  # the wrapper itself
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module == "drf_spectacular.utils"
                and any(alias.name == "extend_schema" for alias in node.names)
            ):
                offenders.append(path.name)
    assert offenders == []
