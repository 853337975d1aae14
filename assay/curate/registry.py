"""The stage registry: recipes and the CLI find stages by name.

`curate` imports none of `operators`, `judges`, `datasets` or `train`; the registry imports
the modules listed in `BUILTIN_MODULES` by name the first time a name is looked up, and
third-party packages add theirs through the `assay.stages` entry point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import TypeVar

from assay.curate.stage import Stage

BUILTIN_MODULES = ("assay.operators", "assay.judges", "assay.datasets")
# a builtin package may list its stage modules in STAGE_MODULES instead of importing them
# in its __init__ (so importing one stage does not import them all)

S = TypeVar("S", bound=type[Stage])

_STAGES: dict[str, type[Stage]] = {}
_loaded = False


def register(cls: S) -> S:
    """Class decorator: make a stage available to recipes under its class name."""
    existing = _STAGES.get(cls.__name__)
    # the same class defined again (a re-run notebook cell, a reloaded module) replaces itself
    if existing is not None and _qualified(existing) != _qualified(cls):
        raise ValueError(
            f"stage name {cls.__name__!r} is taken by {existing.__module__}.{existing.__qualname__}"
        )
    _STAGES[cls.__name__] = cls
    return cls


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for name in BUILTIN_MODULES:
        module = importlib.import_module(name)
        for stage_module in getattr(module, "STAGE_MODULES", ()):
            importlib.import_module(stage_module)
    for entry in entry_points(group="assay.stages"):
        entry.load()


def stages() -> dict[str, type[Stage]]:
    """Every registered stage by name, sorted."""
    _load_builtins()
    return dict(sorted(_STAGES.items()))


def get_stage(name: str) -> type[Stage]:
    """The stage class registered as `name`; a KeyError lists the valid names."""
    known = stages()
    if name not in known:
        raise KeyError(f"unknown stage {name!r}; registered stages: {', '.join(known)}")
    return known[name]
