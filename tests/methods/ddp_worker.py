"""One process of the multi-process tests: trains a config as ``osdsr train`` does, then writes this
rank's generator and discriminator weights to ``OUTPUT/rank<r>.pt``.

    accelerate launch --multi_gpu --num_processes 2 ddp_worker.py CONFIG OUTPUT [KEY=VALUE ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from osdsr.commands.train import load_run_config
from osdsr.methods import resolve_method
from osdsr.train import Trainer


def main(argv: list[str]) -> None:
    config_path, output, *overrides = argv
    config = load_run_config(Path(config_path), overrides)
    _, build = resolve_method(config.method)
    with torch.random.fork_rng():
        torch.manual_seed(config.trainer.seed)
        method = build(config)
    trainer = Trainer(method, config, config.trainer, config.data, Path(output))
    trainer.train(progress=False)
    weights = {"generator": trainer.unwrapped_generator.state_dict()}
    if trainer.discriminator is not None:
        weights["discriminator"] = trainer.accelerator.unwrap_model(trainer.discriminator).state_dict()
    torch.save(weights, Path(output) / f"rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1:])
