"""The one trainer through ``osdsr train configs/d3sr-tiny.yaml``: exact resume, NaN guard, atomic
checkpoints, strict ``--set``, and two processes under ``accelerate launch`` (gloo on CPU)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from osdsr.cli import main
from osdsr.commands.train import load_run_config
from osdsr.methods.d3sr import D3SRMethod
from osdsr.train import Trainer, TrainerConfig, list_checkpoints, lr_factor
from osdsr.weights_io import read_safetensors

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "configs" / "d3sr-tiny.yaml"


def settings(hr: Path, *overrides: str) -> list[str]:
    values = [
        f"data.sources=[{{path: {hr}}}]",
        "data.exclude_list=null",
        "data.crop_size=32",
        "trainer.batch_size=1",
        "trainer.num_threads=null",
        "trainer.log_every=1",
        *overrides,
    ]
    return [arg for value in values for arg in ("--set", value)]


def train(output: Path, steps: int, hr: Path, *extra: str) -> int:
    return main(["train", str(TINY_CONFIG), "--output", str(output), "--max-steps", str(steps), *extra])


def losses(output: Path) -> list[dict[str, float]]:
    """Logged per-step losses (the wall-clock column left out)."""
    with (output / "log.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def exported_weights(output: Path) -> dict[str, torch.Tensor]:
    """The generator weights the run exported to ``output/model``."""
    return read_safetensors(output / "model" / "model.safetensors")[0]


def error_lines(stderr: str) -> list[str]:
    """The command's error messages (stderr also carries the progress bar)."""
    return [line for line in stderr.splitlines() if line.startswith("osdsr train: error:")]


def test_resume_replays_the_same_losses(tmp_path: Path, hr_folder: Path) -> None:
    """40 steps in one go == 20 steps, then --resume to 40 (same per-step losses, same exported EMA model),
    with a learning-rate warm-up across the split: the schedule is a function of the step."""
    extra = settings(hr_folder, "trainer.ema_decay=0.9", "optimizer.warmup_steps=30", "discriminator.warmup_steps=20")
    assert train(tmp_path / "straight", 40, hr_folder, *extra) == 0
    assert train(tmp_path / "split", 20, hr_folder, *extra) == 0
    assert [step for step, _ in list_checkpoints(tmp_path / "split" / "checkpoints")] == [20]
    assert train(tmp_path / "split", 40, hr_folder, "--resume", *extra) == 0
    straight, split = losses(tmp_path / "straight"), losses(tmp_path / "split")
    assert [row["step"] for row in split] == list(range(1, 41))
    assert {"g/mse", "g/edge", "g/adversarial", "d/adversarial"} <= set(straight[0])
    for a, b in zip(straight, split, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    model_a = exported_weights(tmp_path / "straight")
    model_b = exported_weights(tmp_path / "split")
    assert all(torch.allclose(model_a[k], model_b[k], atol=1e-6) for k in model_a)


def test_resume_after_a_stop_between_checkpoints_logs_each_step_once(tmp_path: Path, hr_folder: Path) -> None:
    """A run that stopped at step 14 with its last checkpoint at 10 resumes from 10: steps 11-14 are
    trained and logged again, and the log keeps one row per step, equal to an uninterrupted run's."""
    extra = settings(hr_folder, "trainer.checkpoint_every=10")
    assert train(tmp_path / "straight", 20, hr_folder, *extra) == 0
    assert train(tmp_path / "stopped", 14, hr_folder, *extra) == 0
    (tmp_path / "stopped" / "checkpoints" / "step-00000014.pt").unlink()  # as if killed before it was written
    assert train(tmp_path / "stopped", 20, hr_folder, "--resume", *extra) == 0
    resumed = losses(tmp_path / "stopped")
    assert [row["step"] for row in resumed] == list(range(1, 21))
    for a, b in zip(losses(tmp_path / "straight"), resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_prefetching_the_next_batch_changes_no_number(tmp_path: Path, hr_folder: Path) -> None:
    """The batch made one step ahead on a second thread == the batch made in the step (losses and weights
    equal bit for bit), with gradient accumulation so that micro-steps and steps differ; both runs train
    the UNet (the comparison is not between two equally frozen runs)."""
    extra = settings(hr_folder, "trainer.ema_decay=0.9", "trainer.gradient_accumulation_steps=2")
    assert train(tmp_path / "ahead", 12, hr_folder, *extra) == 0
    assert train(tmp_path / "inline", 12, hr_folder, *extra, "--set", "trainer.prefetch=false") == 0
    assert losses(tmp_path / "ahead") == losses(tmp_path / "inline")
    model_a = exported_weights(tmp_path / "ahead")
    model_b = exported_weights(tmp_path / "inline")
    assert model_a.keys() == model_b.keys()
    assert all(torch.equal(model_a[k], model_b[k]) for k in model_a)
    config = load_run_config(TINY_CONFIG, extra[1::2])
    with torch.random.fork_rng():
        torch.manual_seed(config.trainer.seed)  # the initial weights, as osdsr train makes them
        initial = D3SRMethod(config).generator.state_dict()
    assert any(not torch.equal(model_a[k], initial[k]) for k in model_a if k.startswith("unet."))


def test_lr_schedule_warms_up_then_follows_a_cosine() -> None:
    config = TrainerConfig(max_steps=110, lr_schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(config, s, warmup_steps=10) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(config, 10, warmup_steps=10) == pytest.approx(1.0)
    assert lr_factor(config, 60, warmup_steps=10) == pytest.approx(0.1 + 0.9 * 0.5)  # half way down
    assert lr_factor(config, 110, warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(TrainerConfig(max_steps=50), 30) == 1.0  # constant


def test_init_from_starts_at_an_exported_model_or_a_checkpoint(
    tmp_path: Path, hr_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a zero learning rate the weights cannot move: the export equals the weights it started from."""
    assert train(tmp_path / "first", 3, hr_folder, *settings(hr_folder)) == 0
    first = exported_weights(tmp_path / "first")
    frozen = settings(hr_folder, "optimizer.lr=0.0")
    for name, source in [("from-model", tmp_path / "first" / "model"),
                         ("from-checkpoint", tmp_path / "first" / "checkpoints" / "step-00000003.pt")]:
        assert train(tmp_path / name, 1, hr_folder, *frozen, "--set", f"trainer.init_from={source}") == 0
        second = exported_weights(tmp_path / name)
        assert second.keys() == first.keys()
        assert all(torch.equal(first[k], second[k]) for k in first), name
    assert train(tmp_path / "bad", 1, hr_folder, *frozen, "--set", f"trainer.init_from={tmp_path}") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "no model.safetensors" in errors[0]


def test_init_from_a_config_trains_that_stage_first(
    tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A two-stage recipe is one command: stage 2 names stage 1's config, which is trained when missing."""
    import yaml

    stage1 = yaml.safe_load(TINY_CONFIG.read_text())
    stage1["data"].update(sources=[{"path": str(hr_folder)}], exclude_list=None, crop_size=32)
    stage1["trainer"].update(batch_size=1, max_steps=2, num_threads=None)
    (tmp_path / "stage1.yaml").write_text(yaml.safe_dump(stage1))
    stage2 = {**stage1, "trainer": {**stage1["trainer"], "init_from": "stage1.yaml", "max_steps": 1}}
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(stage2))
    monkeypatch.chdir(tmp_path)
    assert main(["train", "stage2.yaml"]) == 0
    assert [step for step, _ in list_checkpoints(tmp_path / "runs" / "stage1" / "checkpoints")] == [2]
    assert (tmp_path / "runs" / "stage2" / "model" / "model.safetensors").is_file()
    saved = (tmp_path / "runs" / "stage2" / "train_config.json").read_text()
    assert str(Path("runs") / "stage1" / "model") in saved  # the resolved starting point is on record
    stamp = (tmp_path / "runs" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns
    assert main(["train", "stage2.yaml", "--output", "again"]) == 0  # stage 1 is there: not retrained
    assert (tmp_path / "runs" / "stage1" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_existing_run_needs_resume(tmp_path: Path, hr_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path, 1, hr_folder, *settings(hr_folder)) == 0
    assert train(tmp_path, 2, hr_folder, *settings(hr_folder)) == 2
    assert "--resume" in capsys.readouterr().err


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(
    tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = D3SRMethod.generator_losses
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003 - wraps the method as is
        terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] >= 8:  # optimiser step 8
            terms["mse"] = terms["mse"] * float("nan")
        return terms

    monkeypatch.setattr(D3SRMethod, "generator_losses", diverging)
    extra = settings(hr_folder, "trainer.checkpoint_every=3")
    assert train(tmp_path, 20, hr_folder, *extra) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "NaN" in errors[0] and "step 8" in errors[0] and "step-00000006.pt" in errors[0]
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 6]
    assert not (tmp_path / "model").exists()  # nothing exported from a diverged run
    state = torch.load(tmp_path / "checkpoints" / "step-00000006.pt", weights_only=True)
    assert state["step"] == 6 and all(torch.isfinite(v).all() for v in state["generator"].values())

    monkeypatch.setattr(D3SRMethod, "generator_losses", original)
    assert train(tmp_path, 8, hr_folder, "--resume", *extra) == 0
    assert [row["step"] for row in losses(tmp_path)][-2:] == [7.0, 8.0]


@pytest.mark.parametrize(
    "error",
    [OSError(28, "No space left on device"), RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")],
)
def test_a_failed_checkpoint_write_is_one_line_and_leaves_no_file(
    tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: Exception
) -> None:
    def failing_save(obj: object, path: str | Path) -> None:
        Path(path).write_bytes(b"partial checkpoint")
        raise error

    monkeypatch.setattr(torch, "save", failing_save)
    assert train(tmp_path, 2, hr_folder, *settings(hr_folder)) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "step-00000002.pt: could not write the checkpoint" in errors[0]
    assert "free disk space" in errors[0] and "--resume" in errors[0] and ".tmp" not in errors[0]
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no step-*.pt, no temporary file


def test_weights_an_update_ruined_are_never_checkpointed(
    tmp_path: Path, hr_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The loss of step 5 is finite, its update makes a weight inf: no step-5 checkpoint, stop at 4."""
    original = Trainer._train_step

    def ruining(self, *args):  # noqa: ANN001, ANN002 - wraps the method as is
        logs = original(self, *args)
        if self.step == 4:  # the update of optimiser step 5
            with torch.no_grad():
                next(p for p in self.unwrapped_generator.parameters() if p.requires_grad).fill_(float("inf"))
        return logs

    monkeypatch.setattr(Trainer, "_train_step", ruining)
    extra = settings(hr_folder, "trainer.checkpoint_every=1", "trainer.ema_decay=0.9")
    assert train(tmp_path, 10, hr_folder, *extra) == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "became NaN/inf by step 5" in errors[0] and "step-00000004.pt" in errors[0]
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [3, 4]
    state = torch.load(tmp_path / "checkpoints" / "step-00000004.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for part in ("generator", "ema") for v in state[part].values())


def test_a_damaged_newest_checkpoint_gives_way_to_the_newest_intact_one(
    tmp_path: Path, hr_folder: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    extra = settings(hr_folder, "trainer.checkpoint_every=2")
    assert train(tmp_path, 4, hr_folder, *extra, "--no-export") == 0
    newest = tmp_path / "checkpoints" / "step-00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])  # a copy or a disk that stopped half-way
    capsys.readouterr()
    assert main(["export", str(tmp_path), "-o", str(tmp_path / "exported")]) == 0
    warned = caplog.messages[-1]
    assert "step-00000004.pt: unreadable checkpoint" in warned and "using the newest intact one, step-00000002.pt" in warned
    assert "exported step 2 of" in capsys.readouterr().out
    caplog.clear()
    assert train(tmp_path, 5, hr_folder, "--resume", *extra) == 0
    assert any("using the newest intact one, step-00000002.pt" in message for message in caplog.messages)
    assert [row["step"] for row in losses(tmp_path)] == [1.0, 2.0, 3.0, 4.0, 5.0]


def test_resume_applies_a_changed_learning_rate_and_refuses_a_changed_seed(
    tmp_path: Path, hr_folder: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    assert train(tmp_path, 2, hr_folder, *settings(hr_folder), "--no-export") == 0
    assert train(tmp_path, 3, hr_folder, "--resume", *settings(hr_folder, "optimizer.lr=0.1"), "--no-export") == 0
    assert any("applying changed setting(s) optimizer.lr: 0.0002 -> 0.1" in message for message in caplog.messages)
    state = torch.load(tmp_path / "checkpoints" / "step-00000003.pt", weights_only=True)
    assert [group["lr"] for group in state["optimizers"]["generator"]["param_groups"]] == [0.1]
    assert json.loads((tmp_path / "train_config.json").read_text())["optimizer"]["lr"] == 0.1
    for changed in ("trainer.seed=1", "trainer.batch_size=2", "data.crop_size=64"):
        overrides = settings(hr_folder, "optimizer.lr=0.1", changed)
        assert train(tmp_path, 4, hr_folder, "--resume", *overrides) == 2
        errors = error_lines(capsys.readouterr().err)
        assert len(errors) == 1 and changed.split("=")[0] in errors[0] and "would not continue the same run" in errors[0]
    assert [step for step, _ in list_checkpoints(tmp_path / "checkpoints")] == [2, 3]


def test_temporary_files_of_a_killed_run_are_removed_on_the_next(tmp_path: Path, hr_folder: Path) -> None:
    assert train(tmp_path, 1, hr_folder, *settings(hr_folder), "--no-export") == 0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphans = [
        tmp_path / "checkpoints" / f".step-00000002.pt.{dead.stdout.strip()}.k2x9q1.tmp",
        tmp_path / f".log.csv.{dead.stdout.strip()}.a8b7c6.tmp",
    ]
    others = [tmp_path / "checkpoints" / ".notes.tmp", tmp_path / f".log.csv.{os.getpid()}.live01.tmp"]
    for path in orphans + others:
        path.write_bytes(b"partial")
    assert train(tmp_path, 2, hr_folder, "--resume", *settings(hr_folder), "--no-export") == 0
    assert not any(path.exists() for path in orphans) and all(path.exists() for path in others)


def test_unknown_or_ill_typed_override_is_one_clear_line(
    tmp_path: Path, hr_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(tmp_path, 1, hr_folder, "--set", "loss.bogus=1") == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "unknown key(s) ['bogus']" in errors[0]
    assert train(tmp_path, 1, hr_folder, "--set", "trainer.batch_size=many") == 2
    assert "trainer.batch_size: expected an integer" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_accelerate_launch(tmp_path: Path, hr_folder: Path) -> None:
    """DDP on CPU (gloo). accelerate 1.x runs one process for ``--cpu --num_processes 2``; two local CPU
    processes take ``--multi_gpu`` with ``ACCELERATE_USE_CPU=true``."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port()), "-m", "osdsr", "train", str(TINY_CONFIG)]
    launch += ["--output", str(tmp_path / "ddp"), "--max-steps", "2", *settings(hr_folder)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(launch, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "ddp" / "model" / "model.safetensors").is_file()
    assert train(tmp_path / "single", 2, hr_folder, *settings(hr_folder)) == 0
    ddp, single = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert len(ddp) == 2  # logged once, by the main process
    assert ddp[0] == pytest.approx(single[0], abs=1e-6)  # same first batch on rank 0, same initial weights
    assert ddp[1]["g/mse"] != pytest.approx(single[1]["g/mse"], abs=1e-6)  # rank 0 then takes every 2nd batch
