"""The package's imports point one way (README, "Architecture"), and `import hfddpm` stays light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "hfddpm"
# Each unit of the package and its layer: a module may import its own unit and units of lower layers only.
LAYERS = {
    "arguments": 0,
    "durable": 1,
    "conditioning": 1,
    "idx_data": 1,
    "image_data": 2,
    "eval_mode": 1,
    "lazy": 1,
    "schedulers": 2,
    "records": 2,
    "run_folder": 3,
    "models": 3,
    "pipelines": 4,
    "visualize": 5,
    "model_cards": 5,
    "evaluation": 6,
    "hub": 6,
    "training": 7,
    "cli": 8,
    "__main__": 9,
}


def unit_of(module: str) -> str:
    """'hfddpm.training.engine' → 'training'."""
    return module.split(".")[1]


def imported_modules(path: Path, root: Path = PACKAGE) -> set[str]:
    """The hfddpm modules `path` (a file of the package in `root`) imports anywhere in its body (inside functions
    too), as dotted names."""
    module = "hfddpm." + ".".join(path.relative_to(root).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [f"{target}.{alias.name}" for alias in node.names] if target == "hfddpm" else [target]
            found.update(name for name in names if name.startswith("hfddpm."))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hfddpm."))
    return found


def modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py") if path != PACKAGE / "__init__.py")


def test_every_unit_of_the_package_has_a_layer():
    units = {unit_of("hfddpm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)) for path in modules()}
    assert units == set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(PACKAGE)))
def test_imports_point_to_lower_layers_only(path):
    unit = unit_of("hfddpm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    upward = {
        target
        for target in imported_modules(path)
        if unit_of(target) != unit and unit_of(target) != "__version__" and LAYERS[unit_of(target)] >= LAYERS[unit]
    }
    assert not upward, f"{unit} (layer {LAYERS[unit]}) imports {upward}"


def test_the_import_checker_sees_relative_lazy_and_absolute_imports(tmp_path):
    source = "from ..schedulers import DDPMScheduler\ndef f():\n    from ..hub import push_to_hub\nimport hfddpm.cli\n"
    probe = tmp_path / "hfddpm" / "training" / "probe.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(source)
    assert imported_modules(probe, root=tmp_path / "hfddpm") == {"hfddpm.schedulers", "hfddpm.hub", "hfddpm.cli"}


REPOSITORY = PACKAGE.parents[1]
DRAWING = REPOSITORY / "docs" / "imports.md"


def unit_imports() -> dict[str, set[str]]:
    """Which units of the package each unit imports (its own aside), read from the code."""
    edges: dict[str, set[str]] = {unit: set() for unit in LAYERS}
    for path in modules():
        unit = unit_of("hfddpm." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        edges[unit] |= {unit_of(target) for target in imported_modules(path)} - {unit, "__version__"}
    return edges


def drawing(edges: dict[str, set[str]]) -> str:
    """docs/imports.md: the unit import graph as a Mermaid drawing, lower layers at the bottom."""
    lines = [
        "# How hfddpm's modules import each other",
        "",
        "An arrow goes from a unit to a unit it imports (lazy imports inside functions included); lower layers are",
        "drawn lower. Written by `python tests/test_architecture.py` from the code, and checked against it by",
        "`tests/test_architecture.py`, which also fails on any import of a higher layer, so the graph has no cycle.",
        "",
        "```mermaid",
        "graph BT",
    ]
    for unit in sorted(edges, key=lambda unit: (LAYERS[unit], unit)):
        lines += [f"    {unit} --> {target}" for target in sorted(edges[unit], key=lambda u: (LAYERS[u], u))]
    return "\n".join([*lines, "```", ""])


def test_the_drawing_of_the_imports_is_the_codes():
    assert DRAWING.read_text() == drawing(unit_imports()), "redraw it with `python tests/test_architecture.py`"


def test_the_import_graph_has_no_cycle():
    edges, done = unit_imports(), []
    while len(done) < len(edges):  # Kahn's algorithm: a unit whose imports are all placed can be placed next
        ready = [unit for unit in edges if unit not in done and edges[unit] <= set(done)]
        assert ready, f"a cycle among {sorted(set(edges) - set(done))}"
        done += ready


# The optional libraries, which the extras install (`hfddpm.lazy.EXTRAS`): sampling must not need them.
HEAVY = ("datasets", "transformers", "matplotlib", "sklearn", "accelerate", "tensorboard", "torchmetrics")


@pytest.mark.parametrize("statement", ["import hfddpm", "from hfddpm import DDPMScheduler, DDIMScheduler"])
def test_importing_hfddpm_or_its_schedulers_loads_no_optional_library(statement):
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []


if __name__ == "__main__":
    DRAWING.write_text(drawing(unit_imports()))
    print(f"wrote {DRAWING}")
