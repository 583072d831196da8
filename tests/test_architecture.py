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
    "durable": 0,
    "image_data": 0,
    "eval_mode": 0,
    "schedulers": 1,
    "models": 2,
    "pipelines": 3,
    "visualize": 4,
    "model_cards": 4,
    "evaluation": 5,
    "hub": 5,
    "training": 6,
    "cli": 7,
    "__main__": 8,
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


HEAVY = ("datasets", "transformers", "matplotlib", "sklearn", "accelerate", "tensorboard", "torchmetrics")


@pytest.mark.parametrize("statement", ["import hfddpm", "from hfddpm import DDPMScheduler, DDIMScheduler"])
def test_importing_hfddpm_or_its_schedulers_loads_no_heavy_library(statement):
    code = f"import json, sys\n{statement}\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(result.stdout) == []
