"""The one training loop for every method, on ``accelerate``.

A method (``osdsr.methods.<name>``) builds its networks and defines its loss terms; this loop owns
everything else: data and on-the-fly degradation, optimisers, gradient accumulation, mixed precision,
EMA of the generator, atomic checkpoints and exact resume, the NaN guard, validation and logging.

One optimiser step (``Trainer._train_step``) is ``trainer.discriminator_steps`` rounds of
``gradient_accumulation_steps`` micro-batches each. The generator steps once, in the first round
(``step_order: generator_first``: it trains against the discriminator as it is, which then trains on
the same generator outputs) or in the last (``discriminator_first``: the discriminator trains on the
current generator outputs, then the generator trains against the updated discriminator); the
discriminator steps once per round. Gradients of a network are summed over its round's micro-batches
(each loss divided by the number of micro-batches, as ``accelerate`` does), with DDP's all-reduce only
on the last one (``no_sync`` before).

Randomness is stateless per step: the batch of micro-step ``k`` on process ``r`` is fully determined
by ``(seed, k, r)`` (dataset items by index, degradation and method noise by a generator seeded from
the same triple). Resuming from a checkpoint at step ``k`` therefore replays exactly the same losses
as an uninterrupted run.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

from osdsr.config import ranged, to_dict
from osdsr.weights_io import atomic_path, atomic_write_json, remove_orphaned_temporaries

logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^step-(\d{8})\.pt$")


@dataclass(frozen=True)
class SourceConfig:
    path: str
    weight: float = ranged(1.0, "(0, inf)")
    in_memory: bool = True  # False: decode images per batch (training sets larger than memory)


@dataclass(frozen=True)
class DegradationMixConfig:
    preset: str = "realesrgan"  # a name in osdsr.data.degradation.DEGRADATION_PRESETS
    weight: float = ranged(1.0, "(0, inf)")


@dataclass(frozen=True)
class TeacherDataConfig:
    """Distillation targets from a frozen SR model (e.g. the converted Real-ESRGAN x4plus), computed once
    into a disk cache of (HR, LR, teacher output) triples (``osdsr.data.teacher_cache``)."""

    model: str  # an osdsr model folder (any model ``osdsr upscale --model`` loads)
    samples: int = ranged(1024, "[1, inf)")  # cached triples; batches cycle through them (augmented)
    seed: int = ranged(0, "[0, 1e9]")  # crops and degradations of the cache
    shard_size: int = ranged(64, "[1, inf)")
    batch_size: int = ranged(4, "[1, inf)")  # LR crops per teacher call while building
    folder: str = ".cache/teacher"


@dataclass(frozen=True)
class DataConfig:
    sources: tuple[SourceConfig, ...] = (SourceConfig("../shared/data/hr"),)
    exclude_list: str | None = None  # a text file of held-out file names never used for training
    crop_size: int = ranged(256, "[1, inf)")  # HR crop
    degradations: tuple[DegradationMixConfig, ...] = (DegradationMixConfig(),)
    augment: bool = True
    teacher: TeacherDataConfig | None = None  # batches from a teacher cache (adds batch["teacher"])


@dataclass(frozen=True)
class ValidationConfig:
    lr_dir: str | None = None  # LR/HR pairs, e.g. written by `osdsr degrade`
    hr_dir: str | None = None
    every: int = ranged(0, "[0, inf)")  # steps; 0 = never
    max_images: int = ranged(4, "[1, inf)")
    save_images: int = ranged(2, "[0, inf)")


@dataclass(frozen=True)
class TrainerConfig:
    max_steps: int = ranged(1000, "[1, inf)")
    batch_size: int = ranged(8, "[1, inf)")  # per process and micro-step
    gradient_accumulation_steps: int = ranged(1, "[1, inf)")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False  # recompute the large networks' activations in backward (less memory)
    seed: int = ranged(0, "[0, 1e9]")
    ema_decay: float = ranged(0.0, "[0, 1)")  # 0 disables the EMA
    grad_clip: float | None = ranged(1.0, "(0, inf)")  # max gradient norm of each network per step; null: no clipping
    step_order: Literal["generator_first", "discriminator_first"] = "generator_first"
    # discriminator steps per generator step (the D:G ratio), each on its own batch
    discriminator_steps: int = ranged(1, "[1, inf)")
    checkpoint_every: int = ranged(500, "[1, inf)")
    keep_checkpoints: int = ranged(2, "[1, inf)")
    log_every: int = ranged(10, "[1, inf)")
    tensorboard: bool = False
    num_threads: int | None = ranged(None, "[1, inf)")  # torch CPU threads; None = torch's default
    prefetch: bool = True  # degrade the next batch on a second thread while this step trains (same numbers)
    # start from these generator weights: an exported model folder, a checkpoint .pt, or another run's
    # config .yaml (`osdsr train` trains that run first when its runs/<name>/model is missing)
    init_from: str | None = None
    # multiplies every optimiser's lr after its own linear warm-up (the method's optimizer.warmup_steps and
    # its discriminator's warmup_steps)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = ranged(0.0, "[0, 1]")  # the cosine schedule ends at this fraction of the lr
    validation: ValidationConfig = field(default_factory=ValidationConfig)


Outputs = dict[str, torch.Tensor]

# the dtype of frozen weights under each mixed precision (trainable weights and optimiser state stay float32)
FROZEN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Method(Protocol):
    """What a method gives the trainer (see ``osdsr.methods``).

    A step is split in three so that the trainer can order the generator and discriminator updates:
    ``generator_outputs`` runs the generator (and draws what both losses share), ``generator_losses``
    and ``discriminator_losses`` turn those outputs into weighted loss terms (summed by the trainer).
    """

    generator: nn.Module
    discriminator: nn.Module | None
    warmup_steps: dict[str, int]  # linear lr warm-up of each optimiser, in trainer steps

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Every other network the losses run (perceptual networks, teachers, autoencoders), by name: the
        trainer places them on its device, in the frozen dtype under mixed precision."""

    def optimizers(self, generator: nn.Module, discriminator: nn.Module | None) -> dict[str, torch.optim.Optimizer]:
        """``{"generator": ..., "discriminator": ...}`` over the (prepared) modules' trainable parameters."""

    def generator_outputs(self, batch: dict[str, torch.Tensor], generator: nn.Module, rng: torch.Generator) -> Outputs:
        """The generator's forward pass on ``batch`` (with gradients) and the randomness both losses share."""

    def generator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module | None, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Weighted generator loss terms; ``discriminator`` is the bare module with its weights frozen."""

    def discriminator_losses(
        self, batch: dict[str, torch.Tensor], outputs: Outputs, discriminator: nn.Module, rng: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """Weighted discriminator loss terms on the detached ``outputs``; every network call goes through
        ``discriminator`` itself (its forward), so that DDP all-reduces its gradients."""

    def export(self, generator: nn.Module, path: Path) -> Path:
        """Write the trained generator as a model that ``osdsr upscale --model`` loads."""

    def sr_model(self, generator: nn.Module) -> Any:
        """An SR model (``osdsr.models.sr_model``) around the generator, for validation."""


BatchSource = Callable[[int], tuple[dict[str, torch.Tensor], torch.Generator]]  # micro-step -> (batch, rng)
LogRows = dict[str, list[float]]  # logged name -> its values over the micro-batches of a step


def add_logs(rows: LogRows, values: dict[str, float]) -> None:
    for key, value in values.items():
        rows.setdefault(key, []).append(value)


class TrainingDiverged(RuntimeError):
    """A loss or a weight became NaN or infinite; the last good checkpoint is kept."""


class EMA:
    """Exponential moving average of a module's trainable parameters."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        for name, param in module.named_parameters():
            if name in self.shadow:
                self.shadow[name].lerp_(param.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        params = dict(module.named_parameters())
        for name, value in self.shadow.items():
            params[name].copy_(value)


@contextmanager
def gradients_off(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """No weight gradients for ``params`` inside the block (a discriminator during the generator step).

    Gradients still flow through the module to its inputs; the parameters are trainable again after.
    """
    params = list(params)
    for param in params:
        param.requires_grad_(False)
    try:
        yield
    finally:
        for param in params:
            param.requires_grad_(True)


def lr_factor(config: TrainerConfig, step: int, warmup_steps: int = 0) -> float:
    """The multiplier of an optimiser's configured learning rate at trainer step ``step`` (0-based): a
    linear warm-up ``(step + 1) / warmup_steps``, then the schedule; the cosine runs over the rest of
    ``config.max_steps``, so `--max-steps` reshapes it."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if config.lr_schedule == "constant":
        return 1.0
    span = max(config.max_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr_factor(optimizers: Iterable[torch.optim.Optimizer], factor: float) -> None:
    """Scale each parameter group's configured lr (remembered as ``initial_lr``) by ``factor``."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor


def read_initial_weights(path: Path) -> dict[str, torch.Tensor]:
    """Generator weights to start from: an exported model folder (``model.safetensors``) or a
    training checkpoint (its EMA parameters when it has them, with its buffers)."""
    from osdsr.weights_io import read_safetensors

    if path.is_dir():
        if not (path / "model.safetensors").is_file():
            raise ValueError(f"{path}: init_from folder has no model.safetensors (export a model folder, not a LoRA file)")
        return read_safetensors(path / "model.safetensors")[0]
    if path.suffix != ".pt" or not path.is_file():
        raise ValueError(f"{path}: init_from must be an exported model folder, a checkpoint .pt or (for osdsr train) a run config .yaml")
    state = read_checkpoint(path)
    return {**state["generator"], **state.get("ema", {})}  # EMA parameters over the raw ones, buffers kept


def load_initial_weights(module: nn.Module, path: Path) -> None:
    """Load ``read_initial_weights(path)``: a full state dict, or the trained part of one."""
    state = read_initial_weights(path)
    if set(state) == set(module.state_dict()):
        module.load_state_dict(state)
    else:
        load_trained_state(module, state, str(path))


def place(module: nn.Module, device: torch.device, frozen_dtype: torch.dtype | None) -> None:
    """Move ``module`` to ``device``; with ``frozen_dtype``, its frozen floating-point parameters in that
    dtype and its trainable ones in float32 (adapters that peft made in the dtype of a base read in
    ``frozen_dtype``: the optimiser's state follows its parameters); buffers keep their dtype."""
    module.to(device)
    if frozen_dtype is not None:
        for param in module.parameters():
            if param.is_floating_point():
                param.data = param.data.to(torch.float32 if param.requires_grad else frozen_dtype)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The generator for micro-step ``step`` on process ``rank``: a pure function of the triple."""
    rng = torch.Generator(device=device)
    rng.manual_seed((seed * 1_000_003 + step) * 1_009 + rank)
    return rng


def batch_indices(step: int, rank: int, world: int, batch_size: int) -> list[int]:
    """Dataset indices of micro-step ``step`` on process ``rank``: disjoint across processes and steps."""
    start = (step * world + rank) * batch_size
    return list(range(start, start + batch_size))


def read_exclude_list(path: str | None) -> tuple[str, ...]:
    if path is None:
        return ()
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: held-out list not found")
    lines = (line.split("#", 1)[0].strip() for line in file.read_text().splitlines())
    return tuple(line for line in lines if line)


class TrainingData:
    """HR crops by index, degraded on the fly into (lr, hr) batches; with ``data.teacher``, cached
    (lr, hr, teacher) triples instead (the cache is built first where shards are missing)."""

    def __init__(self, config: DataConfig, seed: int, scale: int = 4) -> None:
        from osdsr.data.datasets import HRImageDataset, ImageSource
        from osdsr.data.degradation import DEGRADATION_PRESETS

        unknown = [d.preset for d in config.degradations if d.preset not in DEGRADATION_PRESETS]
        if unknown:
            raise ValueError(f"data.degradations: unknown preset(s) {unknown}; known: {sorted(DEGRADATION_PRESETS)}")
        if config.crop_size % scale:
            raise ValueError(f"data.crop_size {config.crop_size} must be a multiple of the scale {scale}")
        self.presets = [(DEGRADATION_PRESETS[d.preset], d.weight) for d in config.degradations]
        self.dataset = HRImageDataset(
            [ImageSource(s.path, s.weight, s.in_memory) for s in config.sources],
            config.crop_size,
            seed=seed,
            length=2**62,
            augment=config.augment,
            exclude=read_exclude_list(config.exclude_list),
        )
        self.scale = scale
        self.cache = None if config.teacher is None else self._teacher_cache(config, scale)

    def _teacher_cache(self, config: DataConfig, scale: int) -> Any:
        from osdsr.data.datasets import HRImageDataset, ImageSource
        from osdsr.data.teacher_cache import CacheSpec, TeacherCache, build_cache, cache_key, file_digest

        teacher = config.teacher
        weights = Path(teacher.model) / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"data.teacher.model {teacher.model}: no model.safetensors there; give an osdsr model folder")
        key = cache_key(
            {
                "teacher": file_digest(weights),
                "sources": [dataclasses.asdict(s) for s in config.sources],
                "exclude": read_exclude_list(config.exclude_list),
                "crop": config.crop_size,
                "degradations": [(d.preset, d.weight, repr(p)) for d, (p, _) in zip(config.degradations, self.presets)],
                "seed": teacher.seed,
                "shard_size": teacher.shard_size,
                "scale": scale,
            }
        )
        spec = CacheSpec(Path(teacher.folder), key, teacher.samples, teacher.shard_size, teacher.seed)
        crops = HRImageDataset(
            [ImageSource(s.path, s.weight, s.in_memory) for s in config.sources],
            config.crop_size,
            seed=teacher.seed,
            length=2**62,
            augment=False,
            exclude=read_exclude_list(config.exclude_list),
        )

        def make_teacher() -> Any:
            from osdsr.models.teacher import SRTeacher

            return SRTeacher.from_pretrained(teacher.model)

        build_cache(spec, crops, self.presets, make_teacher, teacher.batch_size, scale)
        return TeacherCache(spec, augment_samples=config.augment)

    def batch(self, indices: list[int], rng: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
        from osdsr.data.degradation import degrade

        if self.cache is not None:
            return self.cache.batch(indices, rng, device)
        hr = torch.stack([self.dataset[i]["hr"] for i in indices]).to(device)
        lr = degrade(hr, self.presets, rng, scale=self.scale).lr
        return {"lr": lr, "hr": hr}


def trained_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The part of a state dict a checkpoint needs: trainable parameters and buffers.

    Frozen pretrained weights (an SD UNet under LoRA, a VAE, a teacher) are rebuilt from the config's
    local folders, so checkpoints of LoRA runs stay megabytes instead of gigabytes.
    """
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    return {k: v for k, v in module.state_dict().items() if k not in frozen}


def load_trained_state(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Load a ``trained_state``; every key the module misses must be a frozen parameter."""
    frozen = {name for name, p in module.named_parameters() if not p.requires_grad}
    missing, unexpected = module.load_state_dict(state, strict=False)
    not_frozen = [k for k in missing if k not in frozen]
    if unexpected or not_frozen:
        raise ValueError(
            f"{where}: checkpoint does not match the model (missing {not_frozen[:5]}, unexpected {unexpected[:5]}); "
            "was it written with another config?"
        )


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_PATTERN.match(p.name))]
    return sorted(found)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's contents; ``ValueError`` naming the file when it is truncated or not a checkpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: checkpoint not found") from None
    except Exception as exc:  # torch.load raises RuntimeError, EOFError, pickle errors... on damaged files
        reason = str(exc).splitlines()[0].split(". ")[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: unreadable checkpoint ({reason})") from None
    if not isinstance(state, dict) or not {"step", "generator"} <= set(state):
        raise ValueError(f"{path}: not an osdsr training checkpoint")
    return state


def newest_readable_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint in ``folder`` that reads, and its contents; damaged newer ones are named in a
    warning (an interrupted copy, a full disk) and left in place."""
    found = list_checkpoints(folder)
    if not found:
        raise FileNotFoundError(f"{folder}: no checkpoint found")
    damaged = []
    for _, path in reversed(found):
        try:
            state = read_checkpoint(path)
        except ValueError as exc:
            damaged.append(str(exc))
            continue
        for message in damaged:
            logger.warning("%s; using the newest intact one, %s", message, path.name)
        return path, state
    raise ValueError(f"{folder}: no readable checkpoint ({'; '.join(damaged)}); start a new run")


class Trainer:
    """Runs a method for ``trainer.max_steps`` optimiser steps, resumably."""

    def __init__(self, method: Method, run_config: Any, trainer: TrainerConfig, data: DataConfig, output: Path) -> None:
        from accelerate import Accelerator

        if trainer.num_threads:
            torch.set_num_threads(trainer.num_threads)
        self.method = method
        self.run_config = run_config
        self.config = trainer
        self.output = Path(output)
        self.accelerator = Accelerator(
            gradient_accumulation_steps=trainer.gradient_accumulation_steps,
            mixed_precision=trainer.mixed_precision,
        )
        self.data = TrainingData(data, trainer.seed)
        generator = method.generator
        if trainer.init_from:
            load_initial_weights(generator, Path(trainer.init_from))
        discriminator = method.discriminator
        # the trainer owns where every network lives: the generator, the discriminator and the frozen rest
        self.frozen_dtype = FROZEN_DTYPES.get(trainer.mixed_precision)
        for module in (generator, discriminator, *method.frozen_modules().values()):
            if module is not None:
                place(module, self.accelerator.device, self.frozen_dtype)
        # recorded once: the generator's updates freeze exactly these and nothing else
        self.discriminator_trainable = (
            [p for p in discriminator.parameters() if p.requires_grad] if discriminator is not None else []
        )
        optimizers = method.optimizers(generator, discriminator)
        prepared = self.accelerator.prepare(generator, *([discriminator] if discriminator is not None else []))
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.generator = prepared[0]
        self.discriminator = prepared[1] if discriminator is not None else None
        self.optimizers = {k: self.accelerator.prepare(v) for k, v in optimizers.items()}
        self.ema = EMA(self.unwrapped_generator, trainer.ema_decay) if trainer.ema_decay > 0 else None
        self.step = 0  # completed optimiser steps
        self.log_file = self.output / "log.csv"
        self._tensorboard = None

    @property
    def unwrapped_generator(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.generator)

    @property
    def checkpoint_dir(self) -> Path:
        return self.output / "checkpoints"

    # ---- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        self._check_weights_finite()  # on every process: they hold the same weights and stop together
        self.accelerator.wait_for_everyone()
        if not self.accelerator.is_main_process:
            return None
        state: dict[str, Any] = {
            "step": self.step,
            "generator": trained_state(self.unwrapped_generator),
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
        }
        if self.discriminator is not None:
            state["discriminator"] = trained_state(self.accelerator.unwrap_model(self.discriminator))
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()  # fp16: the loss scale, for an exact resume
        if self.ema is not None:
            state["ema"] = self.ema.shadow
        path = self.checkpoint_dir / f"step-{self.step:08d}.pt"
        try:
            with atomic_path(path) as tmp:
                torch.save(state, tmp)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as a RuntimeError
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            free = shutil.disk_usage(path.parent).free / 2**20 if path.parent.is_dir() else 0.0
            raise OSError(
                f"{path}: could not write the checkpoint ({reason}; {free:.1f} MiB free there); free disk space or "
                "choose another --output, then rerun with --resume"
            ) from None
        for _, old in list_checkpoints(self.checkpoint_dir)[: -self.config.keep_checkpoints]:
            old.unlink()
        logger.info("checkpoint %s", path)
        return path

    def _check_weights_finite(self) -> None:
        """Refuse to checkpoint weights an update ruined (a finite loss can still give NaN/inf weights)."""
        modules = {"generator": self.unwrapped_generator}
        if self.discriminator is not None:
            modules["discriminator"] = self.accelerator.unwrap_model(self.discriminator)
        tensors = {f"{which}.{name}": p for which, m in modules.items() for name, p in m.named_parameters() if p.requires_grad}
        if self.ema is not None:
            tensors.update({f"ema.{name}": value for name, value in self.ema.shadow.items()})
        bad = [name for name, value in tensors.items() if not torch.isfinite(value.detach()).all()]
        if bad:
            raise TrainingDiverged(
                f"weights {bad[:3]}{' ...' if len(bad) > 3 else ''} became NaN/inf by step {self.step}; stopped "
                f"without saving them, last good checkpoint: {self._last_checkpoint_text()} (lower the learning rate)"
            )

    def _last_checkpoint_text(self) -> str:
        found = list_checkpoints(self.checkpoint_dir)
        return str(found[-1][1]) if found else "none yet"

    def load_checkpoint(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Restore a checkpoint (``state``: its contents, already read). Optimiser hyperparameters (lr,
        betas, weight decay) stay as configured, so a changed learning rate applies on resume."""
        state = read_checkpoint(path) if state is None else state
        load_trained_state(self.unwrapped_generator, state["generator"], str(path))
        if self.discriminator is not None:
            load_trained_state(self.accelerator.unwrap_model(self.discriminator), state["discriminator"], str(path))
        for name, opt in self.optimizers.items():
            configured = [{k: v for k, v in group.items() if k != "params"} for group in opt.param_groups]
            opt.load_state_dict(state["optimizers"][name])
            for group, settings in zip(opt.param_groups, configured):
                group.update(settings)
                group["initial_lr"] = settings.get("initial_lr", settings["lr"])
        if self.accelerator.scaler is not None and "scaler" in state:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.shadow = {k: v.to(self.accelerator.device) for k, v in state["ema"].items()}
        self.step = int(state["step"])
        logger.info("resumed from %s at step %d", path, self.step)

    def resume(self) -> bool:
        if not list_checkpoints(self.checkpoint_dir):
            return False
        self.load_checkpoint(*newest_readable_checkpoint(self.checkpoint_dir))
        return True

    # ---- logging -----------------------------------------------------------------------------
    def _drop_log_rows_past_step(self) -> None:
        """Rows logged past the step this run starts from (it stopped between checkpoints, or before its
        first) are logged again as the run trains those steps: drop them so that every step has one row."""
        if not self.accelerator.is_main_process or not self.log_file.exists():
            return
        with self.log_file.open(newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [row for row in rows[1:] if row and int(float(row[0])) <= self.step]
        if len(kept) < len(rows):
            with atomic_path(self.log_file) as tmp, tmp.open("w", newline="") as f:
                csv.writer(f).writerows(kept)

    def _log(self, row: dict[str, float]) -> None:
        if not self.accelerator.is_main_process:
            return
        self.output.mkdir(parents=True, exist_ok=True)
        new = not self.log_file.exists()
        if not new:
            with self.log_file.open() as f:
                header = next(csv.reader(f), [])
            if header != list(row):
                new = True
                self.log_file.rename(self.log_file.with_suffix(f".{int(time.time())}.csv"))
        with self.log_file.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        if self.config.tensorboard:
            if self._tensorboard is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tensorboard = SummaryWriter(str(self.output / "tensorboard"))
            for key, value in row.items():
                if key != "step":
                    self._tensorboard.add_scalar(key, value, int(row["step"]))

    # ---- one optimiser step --------------------------------------------------------------------
    def _prepare(self, micro: int) -> tuple[dict[str, torch.Tensor], torch.Generator]:
        """The batch of micro-step ``micro`` and its generator, as the degradation left it."""
        acc = self.accelerator
        rng = step_generator(self.config.seed, micro, acc.process_index, acc.device)
        indices = batch_indices(micro, acc.process_index, acc.num_processes, self.config.batch_size)
        # the current CUDA device is per thread: the prefetch thread must use this process's GPU
        with torch.cuda.device(acc.device) if acc.device.type == "cuda" else nullcontext():
            return self.data.batch(indices, rng, acc.device), rng

    @property
    def rounds(self) -> int:
        """Rounds of micro-batches per optimiser step: one per discriminator step."""
        return self.config.discriminator_steps if self.discriminator is not None else 1

    def micro_steps(self, step: int, round_: int) -> list[int]:
        """The micro-step indices of round ``round_`` of optimiser step ``step``: consecutive, so that the
        batches are a function of the step (exact resume) and every batch is used once."""
        accum = self.config.gradient_accumulation_steps
        first = (step * self.rounds + round_) * accum
        return list(range(first, first + accum))

    @contextmanager
    def _accumulating(self, module: nn.Module, last: bool) -> Iterator[None]:
        """Backward passes of ``module`` inside the block add to its gradients; DDP all-reduces them only
        on the ``last`` micro-batch of its round (``no_sync`` before)."""
        with nullcontext() if last else self.accelerator.no_sync(module):
            yield

    def _generator_outputs(self, batch: dict[str, torch.Tensor], rng: torch.Generator, grad: bool = True) -> Outputs:
        with torch.set_grad_enabled(grad), self.accelerator.autocast():
            return self.method.generator_outputs(batch, self.generator, rng)

    def _generator_backward(self, batch: dict[str, torch.Tensor], outputs: Outputs, rng: torch.Generator) -> dict[str, float]:
        """The generator's loss and backward pass against the bare discriminator with frozen weights (its
        gradients reach the generator's outputs, none reach its weights: DDP would wait for them)."""
        judge = self.accelerator.unwrap_model(self.discriminator) if self.discriminator is not None else None
        with gradients_off(self.discriminator_trainable):
            with self.accelerator.autocast():
                terms = self.method.generator_losses(batch, outputs, judge, rng)
                loss = sum(terms.values())
            self._check_finite("generator", terms)
            self.accelerator.backward(loss)
        return {f"g/{k}": float(v.detach()) for k, v in terms.items()}

    def _discriminator_backward(self, batch: dict[str, torch.Tensor], outputs: Outputs, rng: torch.Generator) -> dict[str, float]:
        detached = {k: v.detach() for k, v in outputs.items()}
        with self.accelerator.autocast():
            terms = self.method.discriminator_losses(batch, detached, self.discriminator, rng)
            loss = sum(terms.values())
        self._check_finite("discriminator", terms)
        self.accelerator.backward(loss)
        return {f"d/{k}": float(v.detach()) for k, v in terms.items()}

    def _optimizer_step(self, name: str, module: nn.Module) -> None:
        """Clip (fp16: after unscaling) and step one optimiser, then clear its gradients. The fp16 scale
        changes once per round (``_update_scale``), so every network of a round shares one scale."""
        optimizer, scaler = self.optimizers[name], self.accelerator.scaler
        if scaler is not None:
            scaler.unscale_(optimizer.optimizer)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(module.parameters(), self.config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer.optimizer)  # skipped when a gradient is inf/NaN
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def _update_scale(self) -> None:
        if self.accelerator.scaler is not None:
            self.accelerator.scaler.update()

    def _joint_round(self, micro: list[int], batch_of: BatchSource, logs: LogRows) -> None:
        """Generator first: per micro-batch the generator's loss, then the discriminator's on the same
        outputs; both step at the end of the round."""
        for k, index in enumerate(micro):
            batch, rng = batch_of(index)
            last = k == len(micro) - 1
            with self._accumulating(self.generator, last):
                outputs = self._generator_outputs(batch, rng)
                add_logs(logs, self._generator_backward(batch, outputs, rng))
            if self.discriminator is not None:
                with self._accumulating(self.discriminator, last):
                    add_logs(logs, self._discriminator_backward(batch, outputs, rng))
        self._optimizer_step("generator", self.generator)
        if self.discriminator is not None:
            self._optimizer_step("discriminator", self.discriminator)

    def _discriminator_round(self, micro: list[int], batch_of: BatchSource, logs: LogRows) -> None:
        """An extra discriminator step (``discriminator_steps`` > 1) on the current generator's outputs."""
        for k, index in enumerate(micro):
            batch, rng = batch_of(index)
            with self._accumulating(self.discriminator, k == len(micro) - 1):
                outputs = self._generator_outputs(batch, rng, grad=False)
                add_logs(logs, self._discriminator_backward(batch, outputs, rng))
        self._optimizer_step("discriminator", self.discriminator)

    def _discriminator_first_round(self, micro: list[int], batch_of: BatchSource, logs: LogRows) -> None:
        """Discriminator first: it steps on the current generator's outputs, then the generator trains
        against the updated discriminator on the same outputs. With one micro-batch the outputs keep their
        graph; with several they are made again for the generator (the same random draws, replayed), so
        that only one micro-batch's graph is held at a time."""
        keep_graph = len(micro) == 1
        held = []
        for k, index in enumerate(micro):
            batch, rng = batch_of(index)
            before = rng.get_state()
            with self._accumulating(self.discriminator, k == len(micro) - 1):
                outputs = self._generator_outputs(batch, rng, grad=keep_graph)
                add_logs(logs, self._discriminator_backward(batch, outputs, rng))
            held.append((batch, rng, before, outputs if keep_graph else None))
        self._optimizer_step("discriminator", self.discriminator)
        for k, (batch, rng, before, outputs) in enumerate(held):
            with self._accumulating(self.generator, k == len(micro) - 1):
                if outputs is None:
                    after = rng.get_state()
                    rng.set_state(before)
                    outputs = self._generator_outputs(batch, rng)
                    rng.set_state(after)
                add_logs(logs, self._generator_backward(batch, outputs, rng))
        self._optimizer_step("generator", self.generator)

    def _train_step(self, batch_of: BatchSource) -> LogRows:
        """One optimiser step: ``rounds`` rounds of micro-batches, the generator's update in the first
        (generator first) or the last (discriminator first), the discriminator's in each."""
        for name, optimizer in self.optimizers.items():
            set_lr_factor([optimizer], lr_factor(self.config, self.step, self.method.warmup_steps.get(name, 0)))
        generator_first = self.config.step_order == "generator_first" or self.discriminator is None
        generator_round = 0 if generator_first else self.rounds - 1
        logs: LogRows = {}
        for round_ in range(self.rounds):
            micro = self.micro_steps(self.step, round_)
            if round_ != generator_round:
                self._discriminator_round(micro, batch_of, logs)
            elif generator_first:
                self._joint_round(micro, batch_of, logs)
            else:
                self._discriminator_first_round(micro, batch_of, logs)
            self._update_scale()
        return logs

    def _check_finite(self, which: str, terms: dict[str, torch.Tensor]) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        if bad:
            raise TrainingDiverged(
                f"{which} loss {bad} became NaN/inf at step {self.step + 1}; stopped, last good checkpoint: "
                f"{self._last_checkpoint_text()}"
            )

    def train(self, max_steps: int | None = None, progress: bool = True) -> dict[str, float]:
        """Train up to ``max_steps`` (default: the config's); returns the last logged values."""
        from tqdm import tqdm

        total = max_steps if max_steps is not None else self.config.max_steps
        micro_total = total * self.rounds * self.config.gradient_accumulation_steps
        bar = tqdm(
            total=total, initial=self.step, desc="train", disable=not (progress and self.accelerator.is_main_process)
        )
        last: dict[str, float] = {}
        running: dict[str, list[float]] = {}
        start = time.time()
        if self.accelerator.is_main_process:
            for folder in (self.output, self.checkpoint_dir):
                remove_orphaned_temporaries(folder)
        self._drop_log_rows_past_step()
        self.generator.train()
        # One batch ahead: the batch of micro-step k is a pure function of (seed, k, rank), so making it on
        # another thread changes no number; torch releases the GIL, so on a CPU it runs on a second core.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="osdsr-data") if self.config.prefetch else None
        ahead: dict[int, Future] = {}

        def batch_of(micro: int) -> tuple[dict[str, torch.Tensor], torch.Generator]:
            prepared = ahead.pop(micro).result() if micro in ahead else self._prepare(micro)
            if pool is not None and micro + 1 < micro_total:
                ahead[micro + 1] = pool.submit(self._prepare, micro + 1)
            return prepared

        try:  # the bar ends its line before any error message
            while self.step < total:
                for key, values in self._train_step(batch_of).items():
                    running.setdefault(key, []).extend(values)
                if self.ema is not None:
                    self.ema.update(self.unwrapped_generator)
                self.step += 1
                bar.update(1)
                if self.step % self.config.log_every == 0 or self.step == total:
                    last = {"step": self.step, **{k: sum(v) / len(v) for k, v in running.items()}}
                    last["seconds"] = round(time.time() - start, 3)
                    running = {}
                    self._log(last)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k.startswith("g/")})
                if self.config.validation.every and self.step % self.config.validation.every == 0:
                    self.validate()
                if self.step % self.config.checkpoint_every == 0 or self.step == total:
                    self.save_checkpoint()
        finally:
            bar.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return last

    # ---- validation and export -----------------------------------------------------------------
    def _generator_for_export(self, ema: bool = True) -> nn.Module:
        """A copy of the unwrapped generator, with the EMA weights swapped in unless ``ema`` is False
        (training weights untouched)."""
        import copy

        generator = copy.deepcopy(self.unwrapped_generator)
        if ema and self.ema is not None:
            self.ema.copy_to(generator)
        return (generator.float() if self.frozen_dtype is not None else generator).eval()

    @contextmanager
    def _frozen_in_float32(self) -> Iterator[None]:
        """The method's frozen networks in float32 inside the block (validation and export run without
        autocast); under mixed precision their weights stay rounded to the training precision (``osdsr
        export`` of a checkpoint rebuilds them from their files instead)."""
        modules = list(self.method.frozen_modules().values()) if self.frozen_dtype is not None else []
        for module in modules:
            module.float()
        try:
            yield
        finally:
            for module in modules:
                place(module, self.accelerator.device, self.frozen_dtype)

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        from osdsr.validation import validate_folder

        cfg = self.config.validation
        if cfg.lr_dir is None or cfg.hr_dir is None or not self.accelerator.is_main_process:
            return {}
        # a method may validate its raw weights (TAD-SR's release_compat.validate_raw_weights)
        raw = getattr(self.method, "validate_raw_weights", False)
        model = self.method.sr_model(self._generator_for_export(ema=not raw))
        out_dir = self.output / "validation" / f"step-{self.step:08d}"
        with self._frozen_in_float32():
            metrics = validate_folder(model, Path(cfg.lr_dir), Path(cfg.hr_dir), out_dir, cfg.max_images, cfg.save_images)
        self._log_validation(metrics)
        self.generator.train()
        return metrics

    def _log_validation(self, metrics: dict[str, float]) -> None:
        path = self.output / "validation.csv"
        row = {"step": self.step, **metrics}
        new = not path.exists()
        with path.open("a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
        logger.info("validation at step %d: %s", self.step, {k: round(v, 4) for k, v in metrics.items()})

    def export(self, path: Path | None = None) -> Path | None:
        if not self.accelerator.is_main_process:
            return None
        target = path or self.output / "model"
        with self._frozen_in_float32():
            result = self.method.export(self._generator_for_export(), target)
        atomic_write_json(to_dict(self.run_config), self.output / "train_config.json")
        return result


def finite_or_raise(value: float, what: str) -> float:
    if not math.isfinite(value):
        raise TrainingDiverged(f"{what} is not finite")
    return value


def replace_trainer(run_config: Any, **changes: Any) -> Any:
    """A copy of a method config with trainer fields changed (e.g. ``max_steps`` from the CLI)."""
    return dataclasses.replace(run_config, trainer=dataclasses.replace(run_config.trainer, **changes))
