"""Typed configs: frozen dataclasses that YAML maps onto field by field.

Unknown keys are an error, values are checked against the field types and against the valid range a
numeric field declares with ``ranged`` (``lr: float = ranged(5e-5, "[0, 1]")``), and ``--set a.b=c``
overrides any field before the dataclass is built.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


YAML_BOOL_WORDS = {False: ("no", "off", "false"), True: ("yes", "on", "true")}
RANGE_KEY = "range"  # dataclass field metadata key of a numeric field's valid ``Interval``
FLOAT32_MAX = 3.4028234663852886e38  # numbers go into float32 tensors: larger ones become inf


@dataclasses.dataclass(frozen=True)
class Interval:
    """A closed or open interval of numbers, written as in maths: ``"(0, 1]"``, ``"[1, inf)"``."""

    low: float
    high: float
    low_open: bool
    high_open: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> Interval:
        bounds = text.strip()
        if bounds[0] not in "[(" or bounds[-1] not in "])" or bounds.count(",") != 1:
            raise ValueError(f"interval {text!r}: write it as [a, b], (a, b], [a, inf) ...")
        low, high = (float(part) for part in bounds[1:-1].split(","))
        return cls(low, high, bounds[0] == "(", bounds[-1] == ")", text)

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below


def ranged(default: Any, interval: str) -> Any:
    """A dataclass field with ``default`` whose value (each value, for a tuple) must lie in ``interval``."""
    return dataclasses.field(default=default, metadata={RANGE_KEY: Interval.parse(interval)})


def _check_range(field: dataclasses.Field, value: Any, where: str) -> None:
    interval = field.metadata.get(RANGE_KEY)
    if interval is None or value is None:
        return
    for number in value if isinstance(value, (tuple, list)) else (value,):
        if math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise ValueError(f"config {where}: {number!r} overflows float32 (largest {FLOAT32_MAX:.3g}); valid range {interval.text}")
        if number not in interval:
            raise ValueError(f"config {where}: {number!r} is outside its valid range {interval.text}")


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "") -> T:
    """Build dataclass ``cls`` from a plain dict, refusing unknown keys, ill-typed values and values outside
    a field's declared range."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ValueError(f"config {where or 'root'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"config {where or 'root'}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        kwargs[key] = _coerce(hints[key], value, path)
        _check_range(fields[key], kwargs[key], path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, where)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f"config {where}: invalid value {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool) and str(value).lower() not in args:  # YAML 1.1 reads `no` as false
            value = next((word for word in YAML_BOOL_WORDS[value] if word in args), value)
        if value not in args:
            raise ValueError(f"config {where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config {where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise ValueError(f"config {where}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        items = [_coerce(args[0], v, f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config {where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config {where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config {where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config {where}: expected true/false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config {where}: expected a string, got {value!r}")
        return value
    return value


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict (YAML/JSON-ready) view of a config dataclass; tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part!r} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc.__class__.__name__}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return data


def read_json_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON mapping (e.g. a run's ``train_config.json``) with a clear error."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
