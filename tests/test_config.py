"""Typed configs from YAML: strict keys and types, `--set` overrides, YAML 1.1 words for literals."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from osdsr.config import RANGE_KEY, apply_overrides, from_dict, ranged
from osdsr.methods import METHODS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Example:
    precision: Literal["no", "bf16", "fp16"] = "no"
    lr: float = 1e-4
    steps: int = 10


def test_yaml_reads_no_as_false_and_the_literal_still_accepts_it() -> None:
    data = apply_overrides({}, ["precision=no", "lr=5e-4", "steps=20"])
    assert data["precision"] is False  # what YAML 1.1 makes of `no`
    assert from_dict(Example, data) == Example(precision="no", lr=5e-4, steps=20)


def test_unknown_keys_and_wrong_literals_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['bogus'\]"):
        from_dict(Example, {"bogus": 1})
    with pytest.raises(ValueError, match=r"'fp8' is not one of \['no', 'bf16', 'fp16'\]"):
        from_dict(Example, {"precision": "fp8"})
    with pytest.raises(ValueError, match=r"True is not one of"):
        from_dict(Example, {"precision": True})


@dataclass(frozen=True)
class Ranged:
    lr: float = ranged(1e-4, "(0, 1]")
    betas: tuple[float, float] = ranged((0.9, 0.999), "[0, 1)")
    steps: int = ranged(10, "[1, inf)")
    clip: float | None = ranged(None, "(0, inf)")


def test_a_value_outside_its_declared_range_is_one_clear_error() -> None:
    assert from_dict(Ranged, {"lr": 1.0, "betas": [0.0, 0.5], "steps": 1, "clip": None}) == Ranged(1.0, (0.0, 0.5), 1)
    for key, value, message in [
        ("lr", 0.0, r"config lr: 0.0 is outside its valid range \(0, 1\]"),
        ("lr", 1e39, r"config lr: 1e\+39 overflows float32"),
        ("steps", 0, r"config steps: 0 is outside its valid range \[1, inf\)"),
        ("betas", [0.9, 1.0], r"config betas: 1.0 is outside"),
        ("clip", float("nan"), r"config clip: nan is outside"),
        ("clip", float("inf"), r"config clip: inf is outside"),
    ]:
        with pytest.raises(ValueError, match=message):
            from_dict(Ranged, {key: value})


def _numeric(tp: object) -> bool:
    return tp in (int, float) or any(_numeric(a) for a in typing.get_args(tp) if a is not Ellipsis)


def _fields_without_a_range(cls: type, seen: set[type]) -> list[str]:
    if cls in seen:
        return []
    seen.add(cls)
    missing = []
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        nested = [a for a in (hints[item.name], *typing.get_args(hints[item.name])) if dataclasses.is_dataclass(a)]
        nested += [b for a in typing.get_args(hints[item.name]) for b in typing.get_args(a) if dataclasses.is_dataclass(b)]
        for sub in nested:
            missing += _fields_without_a_range(sub, seen)
        if _numeric(hints[item.name]) and RANGE_KEY not in item.metadata:
            missing.append(f"{cls.__name__}.{item.name}")
    return missing


def test_every_numeric_field_of_every_method_config_declares_its_valid_range() -> None:
    seen: set[type] = set()
    missing = [name for load in METHODS.values() for name in _fields_without_a_range(load()[0], seen)]
    assert seen and not missing


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.keep_checkpoints=-1", r"trainer.keep_checkpoints: -1 is outside its valid range \[1, inf\)"),
        ("trainer.keep_checkpoints=0", r"trainer.keep_checkpoints: 0 is outside"),
        ("trainer.gradient_accumulation_steps=0", r"gradient_accumulation_steps: 0 is outside"),
        ("trainer.ema_decay=1.5", r"trainer.ema_decay: 1.5 is outside its valid range \[0, 1\)"),
        ("trainer.checkpoint_every=0", r"trainer.checkpoint_every: 0 is outside"),
        ("trainer.log_every=0", r"trainer.log_every: 0 is outside"),
        ("trainer.batch_size=-2", r"trainer.batch_size: -2 is outside"),
        ("trainer.num_threads=-1", r"trainer.num_threads: -1 is outside"),
        ("optimizer.lr=1e39", r"optimizer.lr: 1e\+39 overflows float32"),
    ],
)
def test_nonsense_training_settings_are_refused_before_training(override: str, message: str) -> None:
    from osdsr.commands.train import load_run_config

    with pytest.raises(ValueError, match=message):
        load_run_config(CONFIGS / "d3sr-tiny.yaml", [override])


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_config_loads_and_its_stage_chain_exists(path: Path) -> None:
    """A renamed stage (configs/default.yaml -> default-v2.yaml) must not leave a dangling ``init_from``."""
    from osdsr.commands.train import load_run_config

    config = load_run_config(path, [])
    init = config.trainer.init_from
    if init is not None:
        assert (CONFIGS.parent / init).is_file(), f"{path.name}: trainer.init_from {init} does not exist"
