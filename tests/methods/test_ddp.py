"""Two CPU processes (DDP over gloo) end every method with a discriminator with the same weights on both
ranks: each network's gradients are all-reduced, none is called around its DDP wrapper."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from resshift_teachers import save_tiny_teacher

REPO_ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("ddp_worker.py")
STUDENT_SETTINGS = ("teacher.steps=2", "trainer.batch_size=1", "data.crop_size=32", "trainer.log_every=1")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rank_difference(output: Path) -> dict[str, float]:
    """Per network, the largest absolute difference between the two ranks' weights."""
    rank0, rank1 = (torch.load(output / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    return {
        network: max((rank0[network][k].float() - rank1[network][k].float()).abs().max().item() for k in rank0[network])
        for network in rank0
    }


def launch_two_processes(config: str, output: Path, settings: list[str]) -> None:
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), str(WORKER), str(REPO_ROOT / "configs" / config), str(output)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*launch, *settings], cwd=output.parent, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("config", ["d3sr-tiny.yaml", "tadsr-tiny.yaml", "tddsr-tiny.yaml"])
def test_both_ranks_end_with_the_same_weights(
    config: str, tmp_path: Path, small_run: Callable[..., list[str]]
) -> None:
    """3 steps with 2 micro-batches each (no_sync on the first), every network: identical on both ranks."""
    settings = small_run("trainer.max_steps=3", "trainer.gradient_accumulation_steps=2", "trainer.checkpoint_every=1000")[1::2]
    if config != "d3sr-tiny.yaml":
        teacher = save_tiny_teacher(tmp_path / "teacher")
        settings += [f"teacher.path={teacher}", *STUDENT_SETTINGS]
    launch_two_processes(config, tmp_path / "run", settings)
    difference = rank_difference(tmp_path / "run")
    assert set(difference) == {"generator", "discriminator"}
    assert difference == {"generator": 0.0, "discriminator": 0.0}
