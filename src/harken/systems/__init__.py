"""Anomaly-detection systems, found through one registry.

Adding a system is one new module with a function decorated by :func:`register_system` that
returns a :class:`~harken.systems.base.Detector`; add its name and module to ``_BUILTIN`` so
it is imported on first use.
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
# built-in system name -> module that registers it (imported on first use of that name)
_BUILTIN = {
    "cae-dann": "harken.systems.cae_dann.system",
    "ae-baseline": "harken.systems.ae_baseline.system",
    "ae-baseline-mahala": "harken.systems.ae_baseline.system",
    "aum": "harken.systems.aum.system",
}


def register_system(name: str) -> Callable[[Callable[[Config], Detector]], Callable[[Config], Detector]]:
    def decorator(factory: Callable[[Config], Detector]) -> Callable[[Config], Detector]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"system {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return decorator


def list_systems() -> list[str]:
    for module in set(_BUILTIN.values()):
        importlib.import_module(module)
    return sorted(_REGISTRY)


def create_system(name: str, config: Config) -> Detector:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise ConfigError(f"unknown system {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](config)
