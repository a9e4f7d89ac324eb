"""``osdsr train CONFIG``: train any method from its YAML config on the one trainer."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from osdsr.cli import CommandError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", type=Path, help="YAML config (configs/<method>-<size>.yaml); 'method:' picks the method")
    parser.add_argument("--output", type=Path, help="run folder for checkpoints, logs and the exported model (default: runs/<config name>)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in the run folder")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimiser steps (overrides trainer.max_steps)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config field, e.g. --set loss.perceptual=dists --set discriminator.kind=none (repeatable)",
    )
    parser.add_argument("--no-export", action="store_true", help="do not export the final model")


def load_run_config(path: Path, overrides: list[str]) -> object:
    """The typed config of the method named in the YAML file, with overrides applied."""
    from osdsr.config import apply_overrides, from_dict, read_yaml
    from osdsr.methods import resolve_method

    data = apply_overrides(read_yaml(path), overrides)
    if "method" not in data:
        raise ValueError(f"{path}: missing 'method:' (one of d3sr, dfosd, resshift, sinsr, tadsr, tddsr)")
    config_cls, _ = resolve_method(data["method"])
    return from_dict(config_cls, data)


# settings a resumed run applies: they steer the steps still to come, not the batches or the model so far
RESUMABLE_TRAINER_FIELDS = frozenset({
    "max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "tensorboard", "num_threads", "prefetch",
    "lr_schedule", "min_lr_ratio", "grad_clip", "validation",
})
# restored as configured (warm-ups: the lr schedule of the steps to come)
OPTIMIZER_FIELDS = frozenset({"lr", "betas", "weight_decay", "discriminator_lr", "warmup_steps", "discriminator_warmup_steps"})


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def resume_changes(recorded: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Settings that differ from the run's recorded ``train_config.json``: (applicable, refused), each as
    ``"key: old -> new"``. Refused ones would make the resumed run differ from any uninterrupted run
    (another seed, batch, data or model); applicable ones only change the steps still to come."""
    old, new = _flatten(recorded), _flatten(current)
    applicable, refused = [], []
    for key in sorted(set(old) | set(new)):
        if old.get(key) == new.get(key):
            continue
        parts = key.split(".")
        resumable = (parts[0] == "trainer" and parts[1] in RESUMABLE_TRAINER_FIELDS) or parts[-1] in OPTIMIZER_FIELDS
        (applicable if resumable else refused).append(f"{key}: {old.get(key)!r} -> {new.get(key)!r}")
    return applicable, refused


def check_resume_changes(output: Path, config: object) -> None:
    """Refuse changed settings that break an exact resume; say which changed ones are applied."""
    from osdsr.config import read_json_file, to_dict

    recorded_path = output / "train_config.json"
    if not recorded_path.is_file():
        return
    applicable, refused = resume_changes(read_json_file(recorded_path), to_dict(config))
    if refused:
        raise CommandError(
            f"--resume {output}: changed setting(s) {'; '.join(refused)} would not continue the same run (other "
            "batches or another model); undo them, or train a new run with another --output (trainer.init_from "
            "can start it from this one)"
        )
    if applicable:
        logger.warning("--resume: applying changed setting(s) %s", "; ".join(applicable))


def stage_output(config_path: Path) -> Path:
    """Where ``osdsr train CONFIG`` writes by default: ``runs/<config name>``."""
    return Path("runs") / config_path.stem


def train_initial_stage(config: object) -> object:
    """``trainer.init_from: other.yaml`` means "start from that run's exported model": train (or resume)
    that run into ``runs/<name>`` first when its model is not there yet, so one command reproduces a
    multi-stage recipe. Returns the config with ``init_from`` pointing at the model folder."""
    init = config.trainer.init_from
    if not init or Path(init).suffix not in (".yaml", ".yml"):
        return config
    stage_config = Path(init)
    if not stage_config.is_file():
        raise CommandError(f"trainer.init_from {init}: config file not found")
    model = stage_output(stage_config) / "model"
    if not model.is_dir():
        logger.info("init_from %s: training that stage first, into %s", init, model.parent)
        stage_args = argparse.Namespace(
            config=stage_config, output=None, resume=True, max_steps=None, overrides=[], no_export=False
        )
        run(stage_args)
    return dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, init_from=str(model)))


def run(args: argparse.Namespace) -> int:
    import torch

    from osdsr.config import to_dict
    from osdsr.methods import resolve_method
    from osdsr.train import Trainer, TrainingDiverged, list_checkpoints
    from osdsr.weights_io import atomic_write_json

    config = load_run_config(args.config, args.overrides)
    config = train_initial_stage(config)
    if args.max_steps is not None:
        if args.max_steps < 1:
            raise CommandError(f"--max-steps {args.max_steps}: must be at least 1")
        config = dataclasses.replace(config, trainer=dataclasses.replace(config.trainer, max_steps=args.max_steps))
    output = args.output or stage_output(args.config)
    if list_checkpoints(output / "checkpoints"):
        if not args.resume:
            raise CommandError(f"{output}: holds checkpoints of an earlier run; pass --resume to continue it or choose another --output")
        check_resume_changes(output, config)
    _, build = resolve_method(config.method)
    with torch.random.fork_rng():  # weight init draws from the global RNG: make it a function of the seed
        torch.manual_seed(config.trainer.seed)
        method = build(config)
    trainer = Trainer(method, config, config.trainer, config.data, output)
    if trainer.accelerator.is_main_process:
        atomic_write_json(to_dict(config), output / "train_config.json")
    if args.resume and not trainer.resume():
        logger.info("no checkpoint in %s: starting from step 0", output / "checkpoints")
    try:
        last = trainer.train()
    except TrainingDiverged as exc:
        raise CommandError(str(exc)) from None
    if not args.no_export:
        exported = trainer.export()
        if exported is not None:
            print(f"exported {exported}")
    if last and trainer.accelerator.is_main_process:
        print("final: " + ", ".join(f"{k}={v:.5g}" for k, v in last.items()))
    return 0
