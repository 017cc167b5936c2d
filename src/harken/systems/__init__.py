"""Anomaly-detection systems, found through one registry.

Adding a system is one new module with a function decorated by :func:`register_system` that
returns a :class:`~harken.systems.base.Detector`; add the module name to ``_BUILTIN`` so it
is imported on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from harken.errors import ConfigError

if TYPE_CHECKING:
    from harken.config import Config
    from harken.systems.base import Detector

_REGISTRY: dict[str, Callable[[Config], Detector]] = {}
_BUILTIN = (
    "harken.systems.cae_dann.system",
    "harken.systems.ae_baseline.system",
    "harken.systems.aum.system",
)
_loaded = False


def register_system(name: str) -> Callable[[Callable[[Config], Detector]], Callable[[Config], Detector]]:
    def decorator(factory: Callable[[Config], Detector]) -> Callable[[Config], Detector]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"system {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        for module in _BUILTIN:
            importlib.import_module(module)
        _loaded = True


def list_systems() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def create_system(name: str, config: Config) -> Detector:
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown system {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](config)
