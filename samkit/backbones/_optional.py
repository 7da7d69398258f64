"""Private helper of the optional SAM backends: import an upstream package or name its extra."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__: list[str] = []


def import_optional(module: str, *, extra: str, what: str, install: str = "") -> ModuleType:
    """Import `module`, or raise an `ImportError` that says which samkit extra provides it.

    Args:
        module: Dotted module name, e.g. `"sam2.modeling.sam.mask_decoder"`.
        extra: The samkit extra that installs it, e.g. `"sam2"`.
        what: What needs it, for the message (e.g. `"SAM 2 backbones"`).
        install: An extra hint on how to install the package by hand.

    Raises:
        ImportError: Naming `pip install "samkit[<extra>]"` when the import fails.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        hint = f" {install}" if install else ""
        raise ImportError(
            f"{what} need the optional dependency {module.split('.')[0]!r}, which could not be "
            f'imported ({err}). Install it with: pip install "samkit[{extra}]".{hint}'
        ) from err
