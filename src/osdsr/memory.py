"""Peak training memory per process of a method's config, estimated on fake tensors (nothing allocated).

The method is built from its config with random full-size weights under
``torch._subclasses.fake_tensor.FakeTensorMode`` (tensors with shapes, dtypes and a device, but no data),
and one optimiser step of the trainer's generator-first round (``osdsr.train.Trainer``: generator outputs,
its losses and backward, the discriminator's losses and backward, clipping, both optimiser steps),
after the optimisers' state exists, runs on a fake batch, under CPU autocast for mixed
precision. A dispatch mode counts every tensor storage the steps create, and frees it when the storage
dies: activations kept for backward, their recomputation under gradient checkpointing, gradients,
optimiser state, autocast's weight copies and temporaries. The peak of that count plus the weights
and the EMA copy of the generator's trainable parameters (``trainer.ema_decay`` > 0) is the estimate; the weights are in the dtypes the trainer keeps them (``osdsr.train.place`` of the
generator, the discriminator and the method's frozen networks: under mixed precision every frozen
parameter in the mixed-precision dtype, every trainable one in float32).

Not counted: the framework's own memory (CUDA context, allocator caching and fragmentation; on a CPU,
the interpreter and libraries), the data pipeline, and the transient peak of loading weights.
"""

from __future__ import annotations

import dataclasses
import logging
import weakref
from unittest import mock
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only

SCALE = 4
MIXED_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2**30
# the settings `osdsr complexity --train --memory` reports: name -> (trainer.mixed_precision, trainer.gradient_checkpointing)
MEMORY_SETTINGS: dict[str, tuple[str, bool]] = {
    "fp32": ("no", False),
    "fp32 + checkpointing": ("no", True),
    "bf16": ("bf16", False),
    "bf16 + checkpointing": ("bf16", True),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process: ``weights`` (all parameters and buffers), ``step_peak`` (the most that a
    training step holds above the weights: optimiser state, activations, gradients, temporaries)."""

    weights: int
    trainable: int  # bytes of trainable parameters (included in ``weights``)
    optimizer_state: int  # held between steps (included in ``step_peak``)
    step_peak: int
    ema: int = 0  # the trainer's EMA copy of the generator's trainable parameters (0 without an EMA)

    @property
    def total(self) -> int:
        return self.weights + self.ema + self.step_peak


class ZeroValues(TorchDispatchMode):
    """Fake tensors hold no values: a number read out of one (a range check, Adam's step count) reads 1
    and a boolean (the rejection loop of ``trunc_normal_``) False, so that code which looks at values
    runs on through."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is torch.ops.aten._local_scalar_dense.default:
            return False if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


class LiveTensorBytes(TorchDispatchMode):
    """Counts the bytes of every storage an operation inside the mode returns, while it lives, except the
    ``existing`` storages (the weights, which in-place updates return)."""

    def __init__(self, existing: set[int]) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.optimizer_state = 0  # set by ``simulate_step``: what the optimisers hold between steps
        self._existing = existing
        self._sizes: dict[int, int] = {}

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._sizes or key in self._existing:
            return
        size = storage.nbytes()
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


def method_modules(method: Any) -> list[nn.Module]:
    """The networks a method holds as attributes (generator, discriminator, teacher, perceptual net...)."""
    return [value for value in vars(method).values() if isinstance(value, nn.Module)]


def place_as_trainer(method: Any, mixed_precision: str) -> None:
    """The trainer's placement (``osdsr.train.Trainer``): the generator, the discriminator and every frozen
    network of the method through ``osdsr.train.place`` with the mixed-precision frozen dtype."""
    from osdsr.train import FROZEN_DTYPES, place

    for module in (method.generator, method.discriminator, *method.frozen_modules().values()):
        if module is not None:
            place(module, torch.device("cpu"), FROZEN_DTYPES.get(mixed_precision))


def weight_storages(modules: list[nn.Module]) -> dict[int, int]:
    """Storage key -> bytes of every parameter and buffer of ``modules``."""
    return {
        t.untyped_storage()._cdata: t.untyped_storage().nbytes()
        for module in modules
        for t in [*module.parameters(), *module.buffers()]
    }


def weight_bytes(modules: list[nn.Module]) -> tuple[int, int]:
    """(all parameter and buffer bytes, trainable parameter bytes), shared storages counted once."""
    trainable: dict[int, int] = {}
    for module in modules:
        trainable.update(
            (p.untyped_storage()._cdata, p.untyped_storage().nbytes()) for p in module.parameters() if p.requires_grad
        )
    return sum(weight_storages(modules).values()), sum(trainable.values())


def ema_bytes(generator: nn.Module) -> int:
    """Bytes of ``osdsr.train.EMA``'s shadow: one clone of every trainable parameter."""
    return sum(p.numel() * p.element_size() for p in generator.parameters() if p.requires_grad)


def simulate_step(
    method: Any, batch: dict[str, torch.Tensor], mixed: torch.dtype | None, grad_clip: float | None
) -> LiveTensorBytes:
    """One optimiser step of the trainer's generator-first round (``Trainer._joint_round``) on ``batch``,
    counted by a ``LiveTensorBytes``, after the optimisers' state exists (a step on zero gradients makes
    it: the steady state of every later step)."""
    from osdsr.train import gradients_off

    generator, discriminator = method.generator, method.discriminator
    counter = LiveTensorBytes(set(weight_storages(method_modules(method))))
    autocast = torch.autocast("cpu", dtype=mixed) if mixed is not None else torch.autocast("cpu", enabled=False)
    rng = torch.Generator().manual_seed(0)
    generator.train()
    frozen_in_generator_step = [p for p in discriminator.parameters() if p.requires_grad] if discriminator else []
    with counter:
        optimizers = method.optimizers(generator, discriminator)
        for optimizer in optimizers.values():
            for group in optimizer.param_groups:
                for param in group["params"]:
                    param.grad = torch.zeros_like(param)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        counter.optimizer_state = counter.live
        with autocast:
            outputs = method.generator_outputs(batch, generator, rng)
        with gradients_off(frozen_in_generator_step):
            with autocast:
                loss = sum(method.generator_losses(batch, outputs, discriminator, rng).values())
            loss.backward()
        del loss
        if discriminator is not None:
            detached = {k: v.detach() for k, v in outputs.items()}
            with autocast:
                d_loss = sum(method.discriminator_losses(batch, detached, discriminator, rng).values())
            d_loss.backward()
            del d_loss, detached
        del outputs
        _clip_and_step(generator, optimizers["generator"], grad_clip)
        if discriminator is not None:
            _clip_and_step(discriminator, optimizers["discriminator"], grad_clip)
    return counter


def _clip_and_step(module: nn.Module, optimizer: torch.optim.Optimizer, grad_clip: float | None) -> None:
    if grad_clip:
        torch.nn.utils.clip_grad_norm_([p for p in module.parameters() if p.requires_grad], grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def estimate_training_memory(
    config: Any,
    *,
    batch_size: int | None = None,
    crop_size: int | None = None,
    mixed_precision: str | None = None,
    gradient_checkpointing: bool | None = None,
) -> MemoryEstimate:
    """Peak memory per process of training ``config`` (a method config), overriding its trainer fields."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    trainer = config.trainer
    changes = {
        "batch_size": batch_size,
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
    }
    trainer = dataclasses.replace(trainer, **{k: v for k, v in changes.items() if v is not None})
    crop = crop_size if crop_size is not None else config.data.crop_size
    if crop % SCALE:
        raise ValueError(f"crop size {crop} must be a multiple of the scale {SCALE}")
    config = dataclasses.replace(config, trainer=trainer)
    mixed = MIXED_DTYPES[trainer.mixed_precision]
    # fake parameters cannot be swapped in place, which is what Module.to does even when nothing changes
    # (peft's adapters and the methods' frozen networks are moved where they already are): keep those no-ops
    with FakeTensorMode(allow_non_fake_inputs=True), mock.patch.object(nn.Module, "to", _to_unless_there):
        with torch.random.fork_rng(), ZeroValues():
            method = FAKE_BUILDERS[config.method](config)
        place_as_trainer(method, trainer.mixed_precision)
        weights, trainable = weight_bytes(method_modules(method))
        ema = ema_bytes(method.generator) if trainer.ema_decay > 0 else 0
        batch = {
            "lr": torch.rand(trainer.batch_size, 3, crop // SCALE, crop // SCALE),
            "hr": torch.rand(trainer.batch_size, 3, crop, crop),
        }
        with ZeroValues():
            counter = simulate_step(method, batch, mixed, trainer.grad_clip)
    return MemoryEstimate(weights, trainable, counter.optimizer_state, counter.peak, ema)


_MODULE_TO = nn.Module.to


def _to_unless_there(module: nn.Module, *args: Any, **kwargs: Any) -> nn.Module:
    device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
    for tensor in [*module.parameters(), *module.buffers()]:
        moved = device is not None and tensor.device != device
        cast = dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype
        if moved or cast:
            return _MODULE_TO(module, *args, **kwargs)
    return module


def _fake_d3sr(config: Any) -> Any:
    from osdsr.methods.d3sr import D3SRMethod
    from osdsr.models.sd_generator import SDGeneratorConfig

    generator = config.generator
    if generator.pretrained is not None or generator.unet is None:  # the SD-2.1-base architecture
        full = SDGeneratorConfig.full()
        generator = dataclasses.replace(generator, pretrained=None, unet=full.unet, vae=full.vae, scheduler=full.scheduler)
    loss = dataclasses.replace(config.loss, vgg_weights=None, head_weights=None, allow_random_perceptual=True)
    discriminator = dataclasses.replace(config.discriminator, pretrained=None)
    config = dataclasses.replace(config, generator=generator, loss=loss, discriminator=discriminator)
    perceptual_log = logging.getLogger("osdsr.losses.perceptual")  # random VGG weights are the point here
    was_disabled, perceptual_log.disabled = perceptual_log.disabled, True
    try:
        return D3SRMethod(config, random_init=True)
    finally:
        perceptual_log.disabled = was_disabled


def _fake_resshift(config: Any) -> Any:
    from osdsr.methods.resshift import ResShiftMethod
    from osdsr.models.resshift_sr import build_autoencoder

    autoencoder = build_autoencoder(config.model_config()).requires_grad_(False).eval()
    return ResShiftMethod(config, autoencoder=autoencoder)


def _fake_student(method_class: Callable[[], type]) -> Callable[[Any], Any]:
    def build(config: Any) -> Any:
        from osdsr.methods.resshift_family import official_teacher

        return method_class()(config, teacher=official_teacher(config.teacher.steps))

    return build


def _sinsr() -> type:
    from osdsr.methods.sinsr import SinSRMethod

    return SinSRMethod


def _tadsr() -> type:
    from osdsr.methods.tadsr import TADSRMethod

    return TADSRMethod


def _tddsr() -> type:
    from osdsr.methods.tddsr import TDDSRMethod

    return TDDSRMethod


# method -> builder of the method from its config with random full-size weights (no file read)
FAKE_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "d3sr": _fake_d3sr,
    "dfosd": _fake_d3sr,
    "resshift": _fake_resshift,
    "sinsr": _fake_student(_sinsr),
    "tadsr": _fake_student(_tadsr),
    "tddsr": _fake_student(_tddsr),
}


def memory_json(estimates: dict[str, MemoryEstimate]) -> dict[str, dict[str, int]]:
    """``{setting: {"weights", "trainable", "optimizer_state", "step_peak", "ema", "total"}}`` in bytes."""
    return {name: {**dataclasses.asdict(e), "total": e.total} for name, e in estimates.items()}


def format_memory_table(estimates: dict[str, MemoryEstimate]) -> str:
    """Aligned text table in GiB: weights, EMA copy, optimiser state, the step's peak above them, total."""
    rows = [("setting", "weights", "EMA", "optimiser", "step peak", "total (GiB)")]
    for name, e in estimates.items():
        rows.append((name, *(f"{v / GIB:,.2f}" for v in (e.weights, e.ema, e.optimizer_state, e.step_peak, e.total))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
