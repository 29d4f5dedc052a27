"""The package's layout: stages import one way, no import circle, modules one reading long."""
import ast
from pathlib import Path

import pytest

import impeller_bench

PACKAGE = Path(impeller_bench.__file__).parent
# The pipeline's stages in order: a module may import from its own stage, the stages before it and the floor.
STAGES = ("common", "data", "detectors", "evaluation", "leaderboard", "inspection", "sweeps", "cli")
MAX_LINES = 450
# One idea each, that reads best in one place.
LONG_MODULES = {
    "impeller_bench.common.metrics": "the metric definitions and the one ranking curve they all read",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Every import statement, at any depth (lazy imports in functions too), except under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if _type_checking_only(node):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def imported_modules(name: str) -> set[str]:
    """The package's modules that ``name`` imports."""
    path = MODULES[name]
    base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES)
            continue
        stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
            if node.level else (node.module or "")
        submodules = [f"{stem}.{a.name}" for a in node.names]
        found.update(m for m in submodules if m in MODULES)
        if stem in MODULES and any(m not in MODULES for m in submodules):  # names from the module itself
            found.add(stem)
    found.discard(name)
    return found


GRAPH = {name: imported_modules(name) for name in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage_of(name: str) -> int | None:
    parts = name.split(".")
    return STAGES.index(parts[1]) if len(parts) > 1 and parts[1] in STAGES else None


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere_in_the_package():
    assert cycles(GRAPH) == []


def test_every_module_belongs_to_a_stage():
    assert [name for name in MODULES if name != "impeller_bench" and stage_of(name) is None] == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_stage_imports_only_from_itself_the_stages_before_it_and_the_floor(name):
    here = stage_of(name)
    if here is None:  # the package's own __init__: the public entry points, imported lazily
        return
    later = sorted(m for m in GRAPH[name] if stage_of(m) is None or stage_of(m) > here)
    assert later == [], f"{name} ({STAGES[here]}) imports from a later stage"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_outgrows_one_reading(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES or name in LONG_MODULES, f"{name}: {lines} lines"


def test_the_public_entry_points_work_from_the_package():
    from impeller_bench import detectors

    assert callable(impeller_bench.load_model) and callable(impeller_bench.evaluate)
    assert callable(impeller_bench.load_dataset) and "ours" in detectors.available()
    assert detectors.create("padim").name == "padim"
