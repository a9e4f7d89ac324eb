"""Parameters and MACs of a method's full-size model, built on the ``meta`` device (nothing allocated).

A method registers, in ``COMPLEXITY_BUILDERS``, a function ``size -> parts``: an ordered mapping
part name -> (module on ``meta``, function returning that part's example inputs for an output image of
``size`` x ``size``), in data-flow order. Each part is run once under
``torch.utils.flop_counter.FlopCounterMode``, which counts convolutions, matrix products (mm, addmm,
bmm) and scaled-dot-product attention at the operator level; MACs = FLOPs / 2.

Conventions:
- ``layers_only`` keeps convolutions and weight matmuls (mm/addmm) and leaves out the
  activation-activation products of attention (bmm/baddbmm, QK^T and AV). Module-hook counters such as
  thop and ptflops, which the papers' tables use, miss those products.
- ``train`` counts one training step: forward plus backward, where backward reaches a part's trainable
  parameters and, when an earlier part is trainable, the part's inputs. Training-only networks
  (discriminators, teachers) are not parts of the generator and are not in its total; a method lists
  them in ``TRAINING_ONLY_BUILDERS`` and each is measured on its own (``training_only_complexity``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

InputBuilder = Callable[[], tuple[torch.Tensor, ...]]
Parts = dict[str, tuple[nn.Module, InputBuilder]]

LAYER_OPS = frozenset({"convolution", "convolution_backward", "mm", "addmm"})  # weights x activations


def _sd_parts(size: int, prompt_embedding: str) -> Parts:
    from osdsr.models.sd_generator import SDGeneratorConfig, sd_complexity_parts

    if size % 8:
        raise ValueError(f"size {size}: the SD autoencoder needs a multiple of 8")
    return sd_complexity_parts(size, SDGeneratorConfig.full(prompt_embedding=prompt_embedding))


def _resshift_parts(size: int, model_type: str) -> Parts:
    from osdsr.models.resshift_sr import resshift_complexity_parts

    return resshift_complexity_parts(size, model_type)


# method -> builder(output size) of its inference parts on ``meta``
COMPLEXITY_BUILDERS: dict[str, Callable[[int], Parts]] = {
    "d3sr": lambda size: _sd_parts(size, "fixed"),  # SD-2.1-base + LoRA rank 16 (D3SR Table 4)
    "dfosd": lambda size: _sd_parts(size, "learnable"),  # same generator, learnable prompt (DFOSD Table 3)
    "resshift": lambda size: _resshift_parts(size, "resshift"),  # 15-step teacher
    "sinsr": lambda size: _resshift_parts(size, "sinsr"),  # one-step students of the same network
    "tadsr": lambda size: _resshift_parts(size, "tadsr"),
    "tddsr": lambda size: _resshift_parts(size, "tddsr"),
}


def _d3sr_discriminators(size: int) -> dict[str, Parts]:
    from osdsr.methods.d3sr import discriminator_complexity_parts

    return discriminator_complexity_parts(size)


def _student_training_networks(method: str) -> Callable[[int], dict[str, Parts]]:
    """The builder ``osdsr.methods.<method>.training_complexity_parts``, imported when first called."""

    def build(size: int) -> dict[str, Parts]:
        return importlib.import_module(f"osdsr.methods.{method}").training_complexity_parts(size)

    return build


# method -> builder(output size) of its training-only networks on ``meta``: network name -> parts
TRAINING_ONLY_BUILDERS: dict[str, Callable[[int], dict[str, Parts]]] = {
    "d3sr": _d3sr_discriminators,  # SD-2.1 and SDXL noise-aware discriminators (D3SR Table 6)
    "dfosd": _d3sr_discriminators,
    "sinsr": _student_training_networks("sinsr"),  # the frozen 15-step ResShift teacher
    "tadsr": _student_training_networks("tadsr"),  # time-aware discriminator on the teacher's encoder; teacher + HSD
    "tddsr": _student_training_networks("tddsr"),  # D_H, downsampler G, D_L (Table 5 paths); teacher
}


def meta_zeros(channels: int, side: int) -> torch.Tensor:
    """One example input ``[1, channels, side, side]`` on ``meta``, for an input builder."""
    return torch.zeros(1, channels, side, side, device="meta")


def meta_steps() -> torch.Tensor:
    """One diffusion step index ``[1]`` (long) on ``meta``, for an input builder."""
    return torch.zeros(1, dtype=torch.long, device="meta")


class ComplexityPart(nn.Module):
    """Runs one stage of a model (a bound method) but owns, and so reports, only that stage's modules."""

    def __init__(self, stage: Callable[..., torch.Tensor], owned: list[nn.Module]) -> None:
        super().__init__()
        self.stage = stage  # a bound method, not a submodule: parameters() sees only ``owned``
        self.owned = nn.ModuleList(owned)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.stage(*inputs)

@dataclass(frozen=True)
class Complexity:
    params: int
    trainable: int
    macs: int


def count_macs(module: nn.Module, inputs: tuple[torch.Tensor, ...], *, train: bool, layers_only: bool) -> int:
    """MACs of one forward (and, with ``train``, backward) pass of ``module`` on ``inputs``."""
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train):
            output = module(*inputs)
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            tensors = [o for o in outputs if isinstance(o, torch.Tensor) and o.requires_grad]
            if train and tensors:
                torch.stack([t.sum() for t in tensors]).sum().backward()
    counts = counter.get_flop_counts().get("Global", {})
    flops = sum(n for op, n in counts.items() if not layers_only or op.__name__.split(".")[-1] in LAYER_OPS)
    return int(flops) // 2


def measure(parts: Parts, *, train: bool = False, layers_only: bool = False) -> dict[str, Complexity]:
    """Per-part params/trainable/MACs plus ``"total"`` (parameters shared by parts counted once)."""
    report: dict[str, Complexity] = {}
    seen: dict[int, nn.Parameter] = {}
    upstream_trainable = False
    for name, (module, build_inputs) in parts.items():
        inputs = build_inputs()
        if train and upstream_trainable:
            inputs = tuple(x.requires_grad_(True) if x.is_floating_point() else x for x in inputs)
        params = list(module.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        report[name] = Complexity(
            params=sum(p.numel() for p in params),
            trainable=trainable,
            macs=count_macs(module, inputs, train=train, layers_only=layers_only),
        )
        seen.update((id(p), p) for p in params)
        upstream_trainable = upstream_trainable or trainable > 0
    report["total"] = Complexity(
        params=sum(p.numel() for p in seen.values()),
        trainable=sum(p.numel() for p in seen.values() if p.requires_grad),
        macs=sum(c.macs for c in report.values()),
    )
    return report


def method_complexity(method: str, size: int, *, train: bool = False, layers_only: bool = False) -> dict[str, Complexity]:
    """Build ``method``'s full-size parts on ``meta`` and measure them at output size ``size``."""
    if method not in COMPLEXITY_BUILDERS:
        raise ValueError(f"no complexity report for {method!r}; known: {sorted(COMPLEXITY_BUILDERS)}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return measure(COMPLEXITY_BUILDERS[method](size), train=train, layers_only=layers_only)


def training_only_complexity(method: str, size: int, *, layers_only: bool = False) -> dict[str, dict[str, Complexity]]:
    """One training step (forward + backward) of each training-only network of ``method``, measured apart."""
    builder = TRAINING_ONLY_BUILDERS.get(method)
    if builder is None:
        return {}
    return {name: measure(parts, train=True, layers_only=layers_only) for name, parts in builder(size).items()}


def as_json(report: dict[str, Complexity]) -> dict[str, object]:
    """``{"parts": {name: {"params", "trainable", "macs"}}, "total": {...}}`` with plain ints."""

    def plain(c: Complexity) -> dict[str, int]:
        return {"params": int(c.params), "trainable": int(c.trainable), "macs": int(c.macs)}

    return {"parts": {k: plain(v) for k, v in report.items() if k != "total"}, "total": plain(report["total"])}


def format_table(report: dict[str, Complexity]) -> str:
    """Aligned text table: parameters in millions, MACs in billions (G)."""
    rows = [("part", "params (M)", "trainable (M)", "MACs (G)")]
    for name, c in report.items():
        rows.append((name, f"{c.params / 1e6:,.2f}", f"{c.trainable / 1e6:,.2f}", f"{c.macs / 1e9:,.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(-1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
