"""Typed configs from YAML: strict keys and types, `--set` overrides, YAML 1.1 words for literals."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from osdsr.config import apply_overrides, from_dict


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
