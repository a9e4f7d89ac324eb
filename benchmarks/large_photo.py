"""Peak memory and time of ``osdsr upscale`` (default model, default options) on a 4000x3000 phone-sized photo.

The photo is made from a real one (``../shared/data/hr/wikimedia-commons/006.png``, resized with Lanczos
and cropped to 4:3, saved as JPEG quality 92 in a temporary folder, never in the repository). The
command runs in a subprocess under ``/usr/bin/time -v``, whose "Maximum resident set size" is the peak.
The issue's bound is 4 GiB.

    python benchmarks/large_photo.py      # writes benchmarks/out/large_photo.{json,md}
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
SOURCE = REPO.parent / "shared" / "data" / "hr" / "wikimedia-commons" / "006.png"
SIZE = (4000, 3000)
BOUND_GIB = 4.0
THREADS = "2"


def make_photo(path: Path) -> None:
    from PIL import Image

    with Image.open(SOURCE) as image:
        rgb = image.convert("RGB")
    height = SIZE[1]
    width = round(rgb.width * height / rgb.height)
    left = (width - SIZE[0]) // 2
    rgb.resize((width, height), Image.LANCZOS).crop((left, 0, left + SIZE[0], height)).save(path, quality=92)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="osdsr-large-") as tmp:
        photo = Path(tmp) / "photo.jpg"
        make_photo(photo)
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": THREADS}
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "osdsr", "upscale", str(photo), "-o", str(Path(tmp) / "out")]
        start = time.time()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.time() - start
        written = Path(tmp) / "out" / "photo.png"
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = None  # the 192-megapixel result is this script's own file
        with Image.open(written) as image:
            output_size = image.size
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    row = {
        "input": f"{SIZE[0]}x{SIZE[1]} JPEG from {SOURCE.name}",
        "output": f"{output_size[0]}x{output_size[1]} PNG",
        "exit_code": result.returncode,
        "peak_rss_gib": round(peak_kib / 2**20, 3),
        "seconds": round(seconds, 1),
        "threads": int(THREADS),
        "load_average_at_end": float(load),
        "within_bound": result.returncode == 0 and peak_kib / 2**20 <= BOUND_GIB,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "large_photo.json").write_text(json.dumps(row, indent=2) + "\n")
    (OUT / "large_photo.md").write_text(
        "# osdsr upscale on a 4000x3000 photo (default model and options)\n\n"
        "| input | output | exit | peak RSS (GiB) | seconds | threads | load average | <= 4 GiB |\n|---|---|---|---|---|---|---|---|\n"
        f"| {row['input']} | {row['output']} | {row['exit_code']} | {row['peak_rss_gib']} | {row['seconds']} | "
        f"{row['threads']} | {row['load_average_at_end']} | {'yes' if row['within_bound'] else '**no**'} |\n\n"
        "Peak = /usr/bin/time -v maximum resident set size of the whole command (Python, torch, the model, "
        "the input, the uint8 result canvas and the band buffers). The machine is shared: seconds depend on its "
        "load.\n"
    )
    print(json.dumps(row, indent=2))
    return 0 if row["within_bound"] else 1


if __name__ == "__main__":
    sys.exit(main())
