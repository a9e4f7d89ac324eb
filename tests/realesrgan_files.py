"""Write tiny Real-ESRGAN networks in the official release formats, for the converter's tests.

- ``.pth``: the BasicSR release layout, ``{"params_ema": state_dict}`` (x4plus) or ``{"params": ...}``.
- ncnn ``.param``/``.bin``: the graph layout of ``realesrgan-ncnn-vulkan``'s ``realesrgan-x4plus`` and
  ``realesr-animevideov3-x4`` files (looked at, not copied): LeakyReLU fused into the convolutions
  (``9=2 -23310=1,0.2``), dense concatenations, residuals as ``Eltwise`` sums with coefficients
  ``(0.2, 1)``, the long skip as ``BinaryOp``, nearest ``Interp`` x2 twice; the compact net as
  Convolution/PReLU pairs, ``PixelShuffle`` and a nearest x4 ``Interp`` of the input. A blob read by
  several layers goes through a ``Split`` layer, as ncnn's converters write it. Convolution weights
  carry the fp16 tag (or the fp32 tag 0), biases and PReLU slopes are raw float32.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

FP16_TAG = 0x01306B47


def round_to_fp16(module: nn.Module) -> nn.Module:
    """Weights rounded to fp16 values (kept float32), so fp16 storage holds them exactly."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module


def randomise(module: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * std)
    return round_to_fp16(module)


def save_pth(network: nn.Module, path: Path, wrapper: str = "params_ema") -> None:
    torch.save({wrapper: network.state_dict()}, path)


class NcnnGraph:
    """Layers in forward order; blobs read more than once get a Split when written."""

    def __init__(self, fp16: bool = True) -> None:
        self.layers: list[tuple[str, str, list[str], str, str]] = []  # type, name, inputs, output, params
        self.weights = bytearray()
        self.fp16 = fp16

    def _add(self, kind: str, inputs: list[str], params: str = "") -> str:
        output = f"b{len(self.layers)}"
        self.layers.append((kind, f"{kind}_{len(self.layers)}", list(inputs), output, params))
        return output

    def input(self) -> str:
        self.layers.append(("Input", "input.1", [], "data", ""))
        return "data"

    def conv(self, x: str, conv: nn.Conv2d, leaky: bool = False) -> str:
        weight = conv.weight.detach().numpy().astype(np.float32)
        activation = " 9=2 -23310=1,2.000000e-01" if leaky else ""
        params = f"0={weight.shape[0]} 1={weight.shape[2]} 4={conv.padding[0]} 5=1 6={weight.size}{activation}"
        if self.fp16:
            data = weight.astype("<f2").tobytes()
            self.weights += FP16_TAG.to_bytes(4, "little") + data + b"\0" * (-len(data) % 4)
        else:
            self.weights += (0).to_bytes(4, "little") + weight.astype("<f4").tobytes()
        self.weights += conv.bias.detach().numpy().astype("<f4").tobytes()
        return self._add("Convolution", [x], params)

    def prelu(self, x: str, prelu: nn.PReLU) -> str:
        slopes = prelu.weight.detach().numpy().astype("<f4")
        self.weights += slopes.tobytes()
        return self._add("PReLU", [x], f"0={slopes.size}")

    def concat(self, xs: list[str]) -> str:
        return self._add("Concat", xs, "0=0")

    def scaled_sum(self, scaled: str, x: str) -> str:
        return self._add("Eltwise", [scaled, x], "0=1 -23301=2,2.000000e-01,1.000000e+00")

    def add(self, a: str, b: str) -> str:
        return self._add("BinaryOp", [a, b], "0=0")

    def nearest(self, x: str, factor: float) -> str:
        return self._add("Interp", [x], f"0=1 1={factor:e} 2={factor:e}")

    def pixel_shuffle(self, x: str, factor: int) -> str:
        return self._add("PixelShuffle", [x], f"0={factor}")

    def write(self, param_path: Path, bin_path: Path) -> None:
        kind, name, inputs, _, params = self.layers[-1]
        self.layers[-1] = (kind, name, inputs, "output", params)
        uses = Counter(blob for layer in self.layers for blob in layer[2])
        lines, taken = [], Counter()
        for kind, name, inputs, output, params in self.layers:
            renamed = []
            for blob in inputs:
                renamed.append(f"{blob}_splitncnn_{taken[blob]}" if uses[blob] > 1 else blob)
                taken[blob] += 1
            lines.append(" ".join(filter(None, [kind, name, str(len(renamed)), "1", *renamed, output, params])))
            if uses[output] > 1:
                outs = [f"{output}_splitncnn_{i}" for i in range(uses[output])]
                lines.append(" ".join(["Split", f"splitncnn_{output}", "1", str(len(outs)), output, *outs]))
        blobs = {b for line in lines for b in line.split()[4:] if "=" not in b}
        param_path.write_text("7767517\n" + f"{len(lines)} {len(blobs)}\n" + "\n".join(lines) + "\n")
        bin_path.write_bytes(bytes(self.weights))


def rrdbnet_graph(network: nn.Module, fp16: bool = True) -> NcnnGraph:
    graph = NcnnGraph(fp16)
    first = graph.conv(graph.input(), network.conv_first)
    features = first
    for block in network.body:
        block_input = features
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            dense = [features]
            for conv in (rdb.conv1, rdb.conv2, rdb.conv3, rdb.conv4):
                dense.append(graph.conv(dense[0] if len(dense) == 1 else graph.concat(dense), conv, leaky=True))
            features = graph.scaled_sum(graph.conv(graph.concat(dense), rdb.conv5), features)
        features = graph.scaled_sum(features, block_input)
    features = graph.add(first, graph.conv(features, network.conv_body))
    for conv in (network.conv_up1, network.conv_up2):
        features = graph.conv(graph.nearest(features, 2.0), conv, leaky=True)
    graph.conv(graph.conv(features, network.conv_hr, leaky=True), network.conv_last)
    return graph


def compact_graph(network: nn.Module, fp16: bool = True) -> NcnnGraph:
    graph = NcnnGraph(fp16)
    image = graph.input()
    features = image
    for layer in network.body:
        features = graph.conv(features, layer) if isinstance(layer, nn.Conv2d) else graph.prelu(features, layer)
    graph.add(graph.pixel_shuffle(features, 4), graph.nearest(image, 4.0))
    return graph
