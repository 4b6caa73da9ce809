"""The package's shape: modules import downward only, with no cycles; operators know nothing of
the pipelines; config modules import no implementation. Every import counts, the late ones
inside functions too, since a late import is how a cycle hides."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"raysift": ROOT / "pipelines", "raysift.operators": ROOT / "operators"}

# Lowest first: a module may import from its own layer and the ones before it.
LAYERS = [
    ["raysift.operators"],
    [
        "raysift.config",
        "raysift.seeding",
        "raysift.run_state",
        "raysift.manifest",
        "raysift.commands",
    ],
    ["raysift.data"],
    ["raysift.training"],
    ["raysift.selection"],
    ["raysift.report"],
    ["raysift.batch"],
    ["raysift.job"],
    ["raysift.transfer"],
    ["raysift.adapt"],
    ["raysift.cli", "raysift.api", "raysift"],
]
CONFIG_MODULES = ["raysift.config", "raysift.transfer.config", "raysift.adapt.config"]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """The raysift modules `name` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        out.update(t for t in targets if t == "raysift" or t.startswith("raysift."))
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {n: {t for t in imports(n, p) if t in found and t != n} for n, p in found.items()}


def layer(name: str) -> int:
    best = max(
        (p for group in LAYERS for p in group if name == p or name.startswith(p + ".")),
        key=len,
    )
    return next(i for i, group in enumerate(LAYERS) if best in group)


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [
        f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
        for a, targets in graph().items()
        for b in targets
        if layer(b) > layer(a)
    ]
    assert upward == []


def test_no_import_cycle():
    g = graph()
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node) :] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(g[node]):
            visit(nxt)
        on_path.pop()

    for node in sorted(g):
        visit(node)
    assert cycles == []


def test_the_checks_see_a_cycle_and_a_late_import():
    """The walk above would miss a cycle if `imports` missed late or relative imports."""
    found = modules()
    assert "raysift.operators.contract" in imports(
        "raysift.operators.norms", found["raysift.operators.norms"]
    )  # a relative import
    assert "raysift.job.rounds" in imports("raysift.cli", found["raysift.cli"])  # a late one


def test_operators_import_nothing_of_the_pipelines():
    wrong = {
        a: sorted(t for t in targets if not t.startswith("raysift.operators"))
        for a, targets in graph().items()
        if a.startswith("raysift.operators")
    }
    assert {a: t for a, t in wrong.items() if t} == {}


def test_config_modules_import_only_config_modules():
    g = graph()
    assert {c: sorted(g[c] - set(CONFIG_MODULES)) for c in CONFIG_MODULES} == {
        c: [] for c in CONFIG_MODULES
    }


def test_reading_a_job_file_or_starting_the_cli_loads_neither_torch_nor_ray():
    probe = (
        "import sys; import raysift, raysift.config, raysift.transfer.config, "
        "raysift.adapt.config, raysift.cli; "
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
