"""Reading ncnn models: the ``.param`` text graph and the weights of its layers in the ``.bin`` file.

``.param`` (ncnn's documented text format): a magic line ``7767517``, then ``<layers> <blobs>``, then
one line per layer: ``type name n_in n_out inputs... outputs... key=value...``. A value with a dot
or an exponent is a float, else an int; a key ``-233KK`` is the array parameter ``KK``, written
``-233KK=n,v1,...,vn``.

``.bin``: the layers' weights back to back, in ``.param`` order, each layer reading its own blobs.
Only the layers whose blobs are listed in ``WEIGHT_BLOBS`` can be read (Convolution: its weights
``[out, in, kh, kw]`` with a storage tag, then, with ``5=1``, a raw float32 bias of ``0=`` values;
PReLU: ``0=`` raw float32 slopes); layers in ``WEIGHT_FREE`` have none; any other type is refused.
A tagged blob starts with a 4-byte tag: ``FP16_TAG`` half floats (padded to 4 bytes), zero raw
float32, ``FP32_SCALED_TAG`` raw float32, ``INT8_TAG`` int8 (refused: needs its quantisation
scales); any other non-zero tag is a 256-entry float32 table followed by uint8 indices (padded).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PARAM_MAGIC = 7767517
ARRAY_KEY_BASE = -23300  # key -233KK holds array parameter KK
FP16_TAG = 0x01306B47
INT8_TAG = 0x000D4B38
FP32_SCALED_TAG = 0x0002C056
QUANTIZATION_TABLE = 256
ParamValue = int | float | tuple[int | float, ...]

WEIGHT_FREE = frozenset(
    {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp", "PixelShuffle", "ReLU", "Sigmoid", "Crop", "Noop"}
)


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, ParamValue] = field(default_factory=dict)

    def param(self, key: int, default: ParamValue = 0) -> ParamValue:
        return self.params.get(key, default)


def _value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def _parse_layer(line: str, where: str) -> NcnnLayer:
    fields = line.split()
    try:
        kind, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        inputs = tuple(fields[4 : 4 + n_in])
        outputs = tuple(fields[4 + n_in : 4 + n_in + n_out])
        if len(outputs) != n_out:
            raise ValueError("too few blob names")
        params: dict[int, ParamValue] = {}
        for item in fields[4 + n_in + n_out :]:
            key_text, value_text = item.split("=", 1)
            key = int(key_text)
            if key <= ARRAY_KEY_BASE:
                count, *values = value_text.split(",")
                if int(count) != len(values):
                    raise ValueError(f"array {key_text} announces {count} values, has {len(values)}")
                params[ARRAY_KEY_BASE - key] = tuple(_value(v) for v in values)
            else:
                params[key] = _value(value_text)
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{where}: not an ncnn layer line ({exc}): {line.strip()[:80]}") from None
    return NcnnLayer(kind, name, inputs, outputs, params)


def read_ncnn_param(path: str | Path) -> list[NcnnLayer]:
    """The layers of an ncnn ``.param`` file, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ncnn .param file not found")
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        raise ValueError(f"{path}: not an ncnn .param text file (first line is not {PARAM_MAGIC})")
    try:
        layer_count = int(lines[1].split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: line 2 should be '<layer count> <blob count>'") from None
    layers = [_parse_layer(line, f"{path}, line {i + 3}") for i, line in enumerate(lines[2:])]
    if len(layers) != layer_count:
        raise ValueError(f"{path}: announces {layer_count} layers, holds {len(layers)}")
    return layers


class _BinReader:
    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.offset, self.source = data, 0, source

    def take(self, size: int, what: str) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError(f"{self.source}: ends at byte {len(self.data)} inside {what}; wrong .bin for this .param?")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def raw_float32(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), dtype="<f4").copy()

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = int.from_bytes(self.take(4, what), "little")
        if tag == FP16_TAG:
            values = np.frombuffer(self.take(_aligned(2 * count), what)[: 2 * count], dtype="<f2")
            return values.astype(np.float32)
        if tag == INT8_TAG:
            raise ValueError(f"{self.source}: {what} is int8-quantised; convert from a float model")
        if tag in (0, FP32_SCALED_TAG):
            return self.raw_float32(count, what)
        table = self.raw_float32(QUANTIZATION_TABLE, what)
        indices = np.frombuffer(self.take(_aligned(count), what)[:count], dtype=np.uint8)
        return table[indices]


def _aligned(size: int) -> int:
    return -(-size // 4) * 4


def _convolution_blobs(layer: NcnnLayer, reader: _BinReader) -> list[np.ndarray]:
    if layer.param(8):
        raise ValueError(f"{reader.source}: {layer.name} is an int8 convolution; convert from a float model")
    blobs = [reader.tagged(int(layer.param(6)), f"{layer.name} weights")]
    if layer.param(5):
        blobs.append(reader.raw_float32(int(layer.param(0)), f"{layer.name} bias"))
    return blobs


def _prelu_blobs(layer: NcnnLayer, reader: _BinReader) -> list[np.ndarray]:
    return [reader.raw_float32(int(layer.param(0, 1)), f"{layer.name} slopes")]


# layer type -> how it reads its blobs from the .bin
WEIGHT_BLOBS: dict[str, Callable[[NcnnLayer, _BinReader], list[np.ndarray]]] = {
    "Convolution": _convolution_blobs,
    "PReLU": _prelu_blobs,
}


def read_ncnn_weights(layers: list[NcnnLayer], path: str | Path) -> dict[str, list[np.ndarray]]:
    """Float32 blobs of every layer that has weights, by layer name; the file must be read exactly."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: ncnn .bin file not found")
    unknown = sorted({layer.type for layer in layers} - WEIGHT_FREE - set(WEIGHT_BLOBS))
    if unknown:
        raise ValueError(f"{path}: layer type(s) {', '.join(unknown)} are not supported here")
    reader = _BinReader(path.read_bytes(), str(path))
    blobs = {layer.name: WEIGHT_BLOBS[layer.type](layer, reader) for layer in layers if layer.type in WEIGHT_BLOBS}
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{path}: {len(reader.data) - reader.offset} bytes left after the last layer; wrong .bin for this .param?"
        )
    return blobs
