"""Names imported on first use (PEP 562), as diffusers' own are, and the extra that installs each optional library:
`pip install hfddpm` brings what sampling needs; training and evaluation need `hfddpm[train]` and `hfddpm[eval]`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# The optional libraries, by the name they import as, and the extras of pyproject.toml that install each.
EXTRAS = {
    "accelerate": ("train",),
    "tensorboard": ("train",),
    "datasets": ("train", "eval"),
    "sklearn": ("train", "eval"),
    "matplotlib": ("train", "eval"),
    "transformers": ("eval",),
    "torchmetrics": ("eval",),
}
# Optional libraries no extra installs, and how to install each.
ELSEWHERE = {"torch_fidelity": "pip install torch-fidelity (FID's Inception network; it needs torchvision)"}


def missing_extra(error: ImportError) -> ImportError:
    """`error` as one line naming the extra to install, when it is an optional library's absence; else `error`."""
    library = (getattr(error, "name", None) or "").split(".")[0]
    if library in ELSEWHERE:
        return ImportError(f"this needs {library}: {ELSEWHERE[library]}", name=library)
    if library not in EXTRAS:
        return error
    extras = " or ".join(f"pip install 'hfddpm[{extra}]'" for extra in EXTRAS[library])
    return ImportError(f"this needs {library}, which hfddpm's extras install: {extras}", name=library)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, which exports each name of `exports` from the module it maps to."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        try:
            value = getattr(importlib.import_module(f".{exports[name]}", package), name)
        except ImportError as error:
            if (friendly := missing_extra(error)) is error:
                raise
            raise friendly from None
        namespace[name] = value  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
