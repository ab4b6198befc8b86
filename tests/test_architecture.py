"""The package's layering: lower layers never import higher ones, and no module import cycles.

The layer order is written here, once. Every import of a package module counts, at module level,
inside functions and under `if TYPE_CHECKING:` alike. Parts on the same layer do not import each
other (they are independent of one another); modules inside one part may import each other, but
not in a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ldns_cli"

# bottom first; a part may import its own modules and parts on lower layers only
LAYERS: list[tuple[str, ...]] = [
    ("core",),  # errors, console, config, paths, data model, checkpoint, runtime
    ("nn", "conditions", "scoring"),  # networks and observation models; condition specs; metrics
    ("io", "diffusion"),  # file formats and simulators; noise schedule, samplers, calibration
    ("store",),  # the model folder: file names, loading and identity checks
    ("generate",),  # the sampling pipeline
    ("fit",),  # training: trainer, splits, one module per stage
    ("auditing",),  # memorisation, membership, realism and utility of samples (uses models)
    ("api",),  # the notebook face
    ("cli",),  # the command line: Typer only
    ("__init__", "__main__"),  # the package's face (`import ldns_cli as ldns`) and `python -m`
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{module}: use absolute imports"
            base = node.module or ""
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("ldns_cli"):
                resolved = _resolve(target)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    # `from ldns_cli.x import y` names both ldns_cli.x and ldns_cli.x.y: keep the deepest module
    return {m for m in found if not any(o.startswith(m + ".") for o in found)} or found


GRAPH = {m: _imports(m) for m in MODULES}


def _part(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def test_every_part_has_a_layer():
    assert {_part(m) for m in MODULES} <= set(RANK)


def test_no_import_runs_up_or_sideways():
    bad = []
    for module, deps in GRAPH.items():
        for dep in deps:
            a, b = _part(module), _part(dep)
            if a != b and RANK[b] >= RANK[a]:
                bad.append(f"{module} (layer {RANK[a]}) imports {dep} (layer {RANK[b]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles():
    # Tarjan's strongly connected components over the module graph
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_the_checker_sees_imports_inside_functions():
    # the CLI imports torch-heavy modules lazily (fast --help); the walk must still see them
    assert "ldns_cli.generate" in GRAPH["ldns_cli.cli.sample"] or any(
        d.startswith("ldns_cli.api") for d in GRAPH["ldns_cli.cli.sample"]
    )
