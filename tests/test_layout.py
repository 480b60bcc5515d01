"""The package's layering, read from every import in its source (those inside functions too): each folder answers
one question and imports only from the folders below it; only the Ray edge imports ray; no import cycle."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "byol_bench"
# Top to bottom: a module may import from its own layer and the layers below it, never from one above.
LAYERS = (
    ("cli",),  # the byol-bench command
    ("on_ray",),  # the Ray edge: the cluster, running a sweep or a tune, the trainable, callbacks, trackers
    ("report",),  # documents: a sweep's report, comparisons, verdicts and the history's report
    ("regression",),  # compare against baselines, the history over revisions, backfill and bisect, statistics
    ("results",),  # a sweep's tables on disk, atomic writes, the folder lock
    ("plan",),  # sweep and tune files -> planned trials
    ("trial",),  # one trial: batches, views, the loop, evaluation, instrumentation, DDP, provenance
    ("config", "protocol"),  # every knob of a trial, validated; what makes two figures comparable
    ("data",),  # the data sets
    ("models",),  # methods and backbones
    ("errors",),
)
RAY_EDGE = "on_ray"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(the package's modules that ``path`` imports, the outside top-level packages it imports), at any depth."""
    ours, outside = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from byol_bench.report import figures` imports the module byol_bench.report.figures
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                     for alias in node.names]
        else:
            continue
        for name in names:
            (ours if name.split(".")[0] == PACKAGE.name else outside).add(name if name in MODULES else name.split(".")[0])
    return ours - {module_name(path)}, outside


def layer(module: str) -> int:
    """The index in LAYERS of a module's folder (or top-level module)."""
    top = module.split(".")[1] if "." in module else "__init__"
    for index, members in enumerate(LAYERS):
        if top in members:
            return index
    return len(LAYERS)  # the package's own __init__: the bottom


def test_every_module_has_a_layer():
    unplaced = [module for module in MODULES if module != PACKAGE.name and layer(module) == len(LAYERS)]
    assert not unplaced, f"put these in a folder of LAYERS (or add a layer): {unplaced}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = [f"{module} imports {imported}" for module, path in MODULES.items() for imported in imports(path)[0]
              if imported in MODULES and layer(imported) < layer(module)]
    assert not upward, "\n".join(upward)


def test_only_the_ray_edge_imports_ray():
    outside_edge = [module for module, path in MODULES.items()
                    if "ray" in imports(path)[1] and not module.startswith(f"{PACKAGE.name}.{RAY_EDGE}")]
    assert not outside_edge, outside_edge


def test_trial_and_model_code_imports_no_planning_results_report_or_regression():
    forbidden = ("plan", "results", "report", "regression", RAY_EDGE, "cli")
    found = [f"{module} imports {imported}" for module, path in MODULES.items()
             if module.split(".")[1:2] in (["trial"], ["models"])
             for imported in imports(path)[0] if imported.split(".")[1:2] and imported.split(".")[1] in forbidden]
    assert not found, "\n".join(found)


def test_no_import_cycle_even_through_imports_inside_functions():
    graph = {module: {other for other in imports(path)[0] if other in MODULES} for module, path in MODULES.items()}
    done, on_path = set(), []

    def visit(module: str) -> None:
        if module in on_path:
            pytest.fail("import cycle: " + " -> ".join([*on_path[on_path.index(module):], module]))
        if module in done:
            return
        on_path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
