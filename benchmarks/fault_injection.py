"""Fault injection, end to end: kill -9, a full disk, a read-only disk, damaged checkpoints, NaN weights
and two processes writing one folder, against ``osdsr train`` / ``export`` / ``upscale`` / ``eval``.

Every case runs the real command line in a subprocess and checks the outcome the user should see: exit
code, one error line and no traceback, nothing lost, nothing wrong written. Full and read-only disks are
small tmpfs mounts, so this needs root (Linux); they are unmounted at the end whatever happens.

    python benchmarks/fault_injection.py          # writes benchmarks/out/fault_injection.{json,md}
    python benchmarks/fault_injection.py --cases nan_weights damaged_checkpoint --out /tmp/faults
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
KODAK = REPO.parent / "shared" / "data" / "hr" / "kodak"
TINY = REPO / "configs" / "d3sr-tiny.yaml"
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
SMALL_DISK = "2m"  # tmpfs size: room for a few upscaled images, not for a checkpoint plus the model


def osdsr(*args: str | Path, wait: bool = True) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [sys.executable, "-m", "osdsr", *map(str, args)]
    if not wait:
        return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)


def train_args(hr: Path, output: Path, steps: int, *extra: str) -> list[str]:
    settings = [f"data.sources=[{{path: {hr}}}]", "data.exclude_list=null", "data.crop_size=32",
                "trainer.batch_size=1", "trainer.log_every=1", "trainer.checkpoint_every=2", *extra]
    return ["train", TINY, "--output", output, "--max-steps", str(steps), *[a for s in settings for a in ("--set", s)]]


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": error:" in line or ": failed:" in line]


def one_line(result: subprocess.CompletedProcess) -> str:
    """The command's error line(s), and whether a traceback was printed."""
    lines = errors(result.stderr)
    shown = " | ".join(lines) if lines else result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
    return ("TRACEBACK " if "Traceback" in result.stderr else "") + shown


@contextmanager
def tmpfs(size: str, read_only: bool = False) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="osdsr-fault-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()


def photos(folder: Path, count: int, size: int = 96) -> Path:
    """``count`` crops of the Kodak photos (size x size PNGs)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(KODAK.glob("*.png"))[:count]:
        with Image.open(path) as image:
            image.crop((0, 0, size, size)).save(folder / path.name)
    return folder


def log_steps(run: Path) -> list[int]:
    lines = (run / "log.csv").read_text().splitlines()[1:]
    return [int(float(line.split(",")[0])) for line in lines]


def temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def wait_for(condition: Callable[[], bool], timeout: float = 300) -> None:
    end = time.time() + timeout
    while not condition():
        if time.time() > end:
            raise TimeoutError("the process never reached the point to kill it at")
        time.sleep(0.05)


# ---- cases: each returns (outcome, passed) ------------------------------------------------------------
def kill_during_training(work: Path, hr: Path) -> tuple[str, bool]:
    reference, killed = work / "reference", work / "killed"
    assert osdsr(*train_args(hr, reference, 12)).returncode == 0
    kills = 0
    for _ in range(3):  # kill -9 three times at different points, resuming after each
        process = osdsr(*train_args(hr, killed, 12), *(["--resume"] if kills else []), wait=False)
        wait_for(lambda: (killed / "log.csv").exists() and len(log_steps(killed)) >= 3 + 3 * kills)
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    result = osdsr(*train_args(hr, killed, 12), "--resume")
    same = (reference / "model" / "model.safetensors").read_bytes() == (killed / "model" / "model.safetensors").read_bytes()
    steps = log_steps(killed)
    ok = result.returncode == 0 and same and steps == list(range(1, 13)) and not temporaries(killed)
    return f"{kills} kills, resumed: rc {result.returncode}, exported weights byte-identical: {same}, log steps 1..12 once each: {steps == list(range(1, 13))}, temporaries left: {len(temporaries(killed))}", ok


def kill_during_upscale(work: Path, hr: Path) -> tuple[str, bool]:
    inputs = photos(work / "up-in", 6, size=160)
    out = work / "up-out"
    process = osdsr("upscale", inputs, "-o", out, wait=False)
    wait_for(lambda: out.is_dir() and len(list(out.glob("*.png"))) >= 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = sorted(p.name for p in out.glob("*.png"))
    orphan = out / f".kodim06.png.{process.pid}.k9lled.tmp"  # as a kill during a write leaves it
    orphan.write_bytes(b"partial")
    result = osdsr("upscale", inputs, "-o", out)
    after = sorted(p.name for p in out.glob("*.png"))
    ok = result.returncode == 0 and len(after) == 6 and not temporaries(out)
    return f"killed with {len(before)} written; rerun rc {result.returncode}: {result.stdout.strip()}; temporaries left: {len(temporaries(out))}", ok


def disk_full_training(work: Path, hr: Path) -> tuple[str, bool]:
    with tmpfs(SMALL_DISK) as disk:
        result = osdsr(*train_args(hr, disk / "run", 4, "trainer.checkpoint_every=1"))
    ok = result.returncode == 2 and len(errors(result.stderr)) == 1 and "Traceback" not in result.stderr
    return f"rc {result.returncode}: {one_line(result)}", ok


def disk_full_upscale(work: Path, hr: Path) -> tuple[str, bool]:
    inputs = photos(work / "big-in", 6, size=256)  # 1024x1024 PNGs of about 1.5-2 MB each
    with tmpfs(SMALL_DISK) as disk:
        result = osdsr("upscale", "--model", "bicubic", inputs, "-o", disk)
        left = temporaries(disk)
    failed = errors(result.stderr)
    ok = result.returncode == 1 and failed and all("no space left" in line and "kodim" in line for line in failed)
    summary = [line for line in (result.stdout + result.stderr).splitlines() if "written," in line]
    return f"rc {result.returncode}: {summary[-1] if summary else ''}; first: {failed[0] if failed else ''}; temporaries left: {len(left)}", bool(ok) and not left


def read_only_upscale(work: Path, hr: Path) -> tuple[str, bool]:
    inputs = photos(work / "ro-in", 2)
    with tmpfs(SMALL_DISK, read_only=True) as disk:
        start = time.time()
        result = osdsr("upscale", inputs, "-o", disk / "out")
        seconds = time.time() - start
    loaded = "loading d3sr model" in result.stderr
    ok = result.returncode == 2 and len(errors(result.stderr)) == 1 and "read-only" in result.stderr and not loaded
    return f"rc {result.returncode} after {seconds:.1f} s, model loaded first: {loaded}: {one_line(result)}", ok


def read_only_eval_csv(work: Path, hr: Path) -> tuple[str, bool]:
    inputs = photos(work / "eval-in", 2)
    with tmpfs(SMALL_DISK, read_only=True) as disk:
        result = osdsr("eval", "--pred", inputs, "--csv", disk / "metrics.csv")
    folder = osdsr("eval", "--pred", inputs, "--csv", work)
    ok = all(r.returncode == 2 and len(errors(r.stderr)) == 1 and "Traceback" not in r.stderr for r in (result, folder))
    return f"read-only: {one_line(result)}; onto a folder: {one_line(folder)}", ok


def read_only_training(work: Path, hr: Path) -> tuple[str, bool]:
    with tmpfs(SMALL_DISK, read_only=True) as disk:
        result = osdsr(*train_args(hr, disk / "run", 2))
    ok = result.returncode == 2 and len(errors(result.stderr)) == 1 and "Traceback" not in result.stderr
    return f"rc {result.returncode}: {one_line(result)}", ok


def damaged_checkpoint(work: Path, hr: Path) -> tuple[str, bool]:
    run = work / "damaged"
    assert osdsr(*train_args(hr, run, 6), "--no-export").returncode == 0
    newest = run / "checkpoints" / "step-00000006.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    exported = osdsr("export", run, "-o", work / "damaged-model")
    resumed = osdsr(*train_args(hr, run, 8), "--resume")
    warned = "using the newest intact one, step-00000004.pt"
    ok = exported.returncode == 0 and resumed.returncode == 0 and warned in exported.stderr and warned in resumed.stderr
    ok = ok and log_steps(run) == list(range(1, 9))
    return f"export rc {exported.returncode}: {exported.stdout.strip()}; resume rc {resumed.returncode}, log steps 1..8 once: {log_steps(run) == list(range(1, 9))}; warning: {warned in resumed.stderr}", ok


def every_checkpoint_damaged(work: Path, hr: Path) -> tuple[str, bool]:
    run = work / "all-damaged"
    assert osdsr(*train_args(hr, run, 4), "--no-export").returncode == 0
    for path in (run / "checkpoints").iterdir():
        path.write_bytes(b"not a checkpoint")
    result = osdsr(*train_args(hr, run, 6), "--resume")
    ok = result.returncode == 2 and len(errors(result.stderr)) == 1 and "no readable checkpoint" in result.stderr
    return f"rc {result.returncode}: {one_line(result)[:160]}...", ok


NAN_TRAINING = """
import sys, torch
from osdsr.cli import main
from osdsr.train import Trainer
original = Trainer._train_step
def ruining(self, *args):
    logs = original(self, *args)
    if self.step == 4:  # the update of step 5 leaves a weight at inf while its loss was finite
        with torch.no_grad():
            next(p for p in self.unwrapped_generator.parameters() if p.requires_grad).fill_(float("inf"))
    return logs
Trainer._train_step = ruining
sys.exit(main(sys.argv[1:]))
"""


def nan_weights(work: Path, hr: Path) -> tuple[str, bool]:
    run = work / "nan"
    command = [sys.executable, "-c", NAN_TRAINING, *map(str, train_args(hr, run, 10, "trainer.checkpoint_every=1"))]
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=900)
    exported = osdsr("export", run, "-o", work / "nan-model")
    upscaled = osdsr("upscale", "--model", work / "nan-model", photos(work / "nan-in", 1), "-o", work / "nan-out")
    ok = result.returncode == 2 and "step-00000004.pt" in one_line(result) and exported.returncode == 0
    ok = ok and upscaled.returncode == 0 and "exported step 4" in exported.stdout
    return f"train rc {result.returncode}: {one_line(result)}; export: {exported.stdout.strip().split(' of ')[0]}; upscale rc {upscaled.returncode}", ok


def two_processes_one_folder(work: Path, hr: Path) -> tuple[str, bool]:
    inputs = photos(work / "race-in", 8, size=128)
    out = work / "race-out"
    first, second = (osdsr("upscale", inputs, "-o", out, wait=False) for _ in range(2))
    results = [process.communicate() for process in (first, second)]
    summaries = [re.search(r"\d+ written, \d+ skipped, \d+ failed", stdout + stderr).group(0) for stdout, stderr in results]
    written = sum(int(s.split(" written")[0]) for s in summaries)
    ok = all(p.returncode == 0 for p in (first, second)) and written == 8 and len(list(out.glob("*.png"))) == 8
    return f"{summaries[0]} / {summaries[1]}: {written} writes for 8 files", ok


CASES = {
    "kill -9 during training (x3), --resume": kill_during_training,
    "kill -9 during upscale, rerun": kill_during_upscale,
    "disk full (2 MiB tmpfs) while saving a checkpoint": disk_full_training,
    "disk full (2 MiB tmpfs) during an upscale batch": disk_full_upscale,
    "read-only output folder (ro tmpfs): upscale": read_only_upscale,
    "read-only / folder --csv: eval": read_only_eval_csv,
    "read-only run folder: train": read_only_training,
    "newest checkpoint truncated: export, --resume": damaged_checkpoint,
    "every checkpoint damaged: --resume": every_checkpoint_damaged,
    "update makes a weight inf (loss finite)": nan_weights,
    "two upscale processes into one folder": two_processes_one_folder,
}


def write_table(rows: list[dict], out: Path) -> None:
    """The table so far (written after every case, so an interrupted run keeps what it found)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "fault_injection.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| case | outcome | as expected | s |", "|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['outcome'].replace('|', '/')} | {'yes' if r['passed'] else '**no**'} | {r['seconds']} |" for r in rows]
    (out / "fault_injection.md").write_text("# Fault injection (benchmarks/fault_injection.py)\n\n" + "\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    by_name = {case.__name__: (title, case) for title, case in CASES.items()}
    parser.add_argument("--cases", nargs="+", choices=list(by_name), default=list(by_name), metavar="CASE",
                        help="the cases to run (default: all): " + ", ".join(by_name))
    parser.add_argument("--out", type=Path, default=OUT, help="folder of fault_injection.{json,md} (default: %(default)s)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="osdsr-faults-") as tmp:
        work = Path(tmp)
        hr = photos(work / "hr", 2, size=80)
        for name, case in (by_name[key] for key in args.cases):
            start = time.time()
            try:
                outcome, passed = case(work, hr)
            except Exception as exc:  # a case that cannot run is reported, the others still run
                outcome, passed = f"could not run: {type(exc).__name__}: {exc}", False
            rows.append({"case": name, "outcome": outcome, "passed": passed, "seconds": round(time.time() - start, 1)})
            print(f"{'ok ' if passed else 'BAD'} {name}: {outcome}", flush=True)
            write_table(rows, args.out)
    return 0 if all(r["passed"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
