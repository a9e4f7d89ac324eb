"""Training methods: each builds its networks and loss terms from its config for the one trainer.

``METHODS`` maps the ``method:`` field of a config file to (config dataclass, method builder);
``full_config(name)`` reads the full-size settings of ``configs/<name>.yaml`` (shipped with the package).
"""

from __future__ import annotations

from typing import Any, Callable


def _d3sr() -> tuple[type, Callable[[Any], Any]]:
    from osdsr.methods.d3sr import D3SRConfig, D3SRMethod

    return D3SRConfig, D3SRMethod


def _resshift() -> tuple[type, Callable[[Any], Any]]:
    from osdsr.methods.resshift import ResShiftMethod, ResShiftTrainConfig

    return ResShiftTrainConfig, ResShiftMethod


def _sinsr() -> tuple[type, Callable[[Any], Any]]:
    from osdsr.methods.sinsr import SinSRConfig, SinSRMethod

    return SinSRConfig, SinSRMethod


def _tadsr() -> tuple[type, Callable[[Any], Any]]:
    from osdsr.methods.tadsr import TADSRConfig, TADSRMethod

    return TADSRConfig, TADSRMethod


def _tddsr() -> tuple[type, Callable[[Any], Any]]:
    from osdsr.methods.tddsr import TDDSRConfig, TDDSRMethod

    return TDDSRConfig, TDDSRMethod


# method name -> loader returning (config class, builder); loaders import lazily (diffusers is slow to import)
METHODS: dict[str, Callable[[], tuple[type, Callable[[Any], Any]]]] = {
    "d3sr": _d3sr,
    "dfosd": _d3sr,
    "resshift": _resshift,
    "sinsr": _sinsr,
    "tadsr": _tadsr,
    "tddsr": _tddsr,
}


def resolve_method(name: str) -> tuple[type, Callable[[Any], Any]]:
    if name not in METHODS:
        raise ValueError(f"config: unknown method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]()


def full_config(name: str) -> Any:
    """The typed config of method ``name``'s full-size ``configs/<name>.yaml`` (for complexity reports)."""
    from osdsr.config import from_dict, read_yaml
    from osdsr.shipped import shipped_path

    config_class, _ = resolve_method(name)
    return from_dict(config_class, read_yaml(shipped_path(f"configs/{name}.yaml")))
