"""Lazy public names for samkit's packages (PEP 562), as in scipy, kornia and timm.

Each package `__init__` says which submodule defines each of its public names and hands the
table to `attach`, which returns the package's module-level `__getattr__` and `__dir__`. A
submodule is imported the first time one of its names (or the submodule itself) is looked up,
so `import samkit` loads neither torch's vision stack nor segment_anything / open_clip until
something needs them. The same names are imported under `if TYPE_CHECKING:` in each `__init__`,
so type checkers and IDEs see them as ordinary imports.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str,
    exports: Mapping[str, Iterable[str]],
    *,
    submodules: Iterable[str] = (),
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return a `__getattr__` and a `__dir__` that import `package`'s names when first used.

    Args:
        package: The package's `__name__`, e.g. `"samkit.backbones"`.
        exports: Submodule name relative to `package` (e.g. `"clip"`) -> the public names it
            defines. Each of these submodules can also be looked up as an attribute.
        submodules: Further submodules that can be looked up as attributes (e.g. `"data"`).

    Returns:
        `(__getattr__, __dir__)`, to be bound at module level in the package's `__init__`.

    Raises:
        ValueError: If a name is listed under two submodules, or is both a name and a submodule.

    Examples:
        >>> getattr_, dir_ = attach("samkit", {"types": ["Prompts"]})
        >>> getattr_("Prompts").__name__
        'Prompts'
        >>> "Prompts" in dir_()
        True
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(
                    f"exports: {package}.{name} is listed under both {where[name]!r} and "
                    f"{module!r}; expected one submodule per name"
                )
            where[name] = module
    modules = frozenset(exports) | frozenset(submodules)
    both = sorted(modules & set(where))
    if both:
        raise ValueError(
            f"submodules: {both} of {package} are also listed as names; expected each to be "
            "either a submodule or a name defined in one"
        )

    def __getattr__(name: str) -> Any:
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where) | modules)

    return __getattr__, __dir__
