"""Safe, atomic reading and writing of weights and small JSON files.

Weights are read only through safetensors (or ``torch.load(weights_only=True)`` for official
``.pth`` files, in the converters). Every write goes to a temporary name in the target folder and is
renamed into place, so an interrupted write never leaves a half-written file behind; the temporary
name carries the writer's process id, so the next run removes what a killed process left
(``remove_orphaned_temporaries``).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

KEYS_SHOWN = 8  # how many missing / unexpected keys an error message lists
WRAPPER_KEY = "state_dict"  # {"state_dict": ...}: the usual wrapping of a training checkpoint
KEY_PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile
MODEL_CONFIG_FILE = "config.json"  # a model folder: config.json + model.safetensors
MODEL_WEIGHTS_FILE = "model.safetensors"

logger = logging.getLogger(__name__)

TEMPORARY_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")  # .<name>.<pid>.<random>.tmp
WRITE_ERRORS = {
    errno.EACCES: "permission denied: fix the folder's permissions or choose another output",
    errno.EPERM: "permission denied: fix the folder's permissions or choose another output",
    errno.EROFS: "read-only file system: choose an output folder on a writable disk",
    errno.ENOSPC: "no space left on device: free disk space or choose another output",
    errno.EDQUOT: "disk quota exceeded: free space or choose another output",
}


def write_error(path: Path, exc: OSError) -> OSError:
    """``exc`` (raised while writing ``path`` or its temporary) as one line naming ``path`` itself."""
    reason = WRITE_ERRORS.get(exc.errno, exc.strerror or str(exc))
    return type(exc)(f"{path}: cannot write ({reason})")


@contextmanager
def atomic_path(path: str | Path, *, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, else delete it.

    ``exclusive``: create ``path`` only if it does not exist at that moment (a hard link, which fails
    when the name is taken), so of two processes writing one name the second gets ``FileExistsError``
    instead of replacing the first's file. Write errors name ``path``, not the temporary file.
    """
    path = Path(path)
    tmp_path: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        if exclusive:
            _link_exclusively(tmp_path, path)
        else:
            os.replace(tmp_path, path)
    except FileExistsError:
        raise
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def _link_exclusively(tmp_path: Path, path: Path) -> None:
    try:
        os.link(tmp_path, path)
    except FileExistsError:
        raise FileExistsError(f"{path}: already exists (written meanwhile by another process)") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if path.exists():  # a file system without hard links: check, then rename
            raise FileExistsError(f"{path}: already exists (written meanwhile by another process)") from None
        os.replace(tmp_path, path)


def remove_orphaned_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files ``atomic_path`` left in ``folder`` when its process was killed (their
    process id is in the name and that process is gone); other files, and those of live processes, stay."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for candidate in folder.iterdir():
        match = TEMPORARY_NAME.match(candidate.name)
        if match and candidate.is_file() and not _process_alive(int(match["pid"])):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    if removed:
        logger.info("removed %d temporary file(s) of interrupted runs in %s", len(removed), folder)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def check_writable(folder: str | Path) -> None:
    """Raise one clear ``OSError`` now if files cannot be created in ``folder`` (before any work is done)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".osdsr-write-test.{os.getpid()}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise write_error(folder, exc) from None


def atomic_write_json(data: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def atomic_write_safetensors(state: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp), metadata=metadata)


def save_model_folder(
    directory: str | Path,
    state: dict[str, torch.Tensor],
    config: dict[str, Any],
    metadata: dict[str, str],
    overwrite: bool = False,
) -> Path:
    """Write a model folder, ``model.safetensors`` then ``config.json`` (each atomically)."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"{directory}: exists and is not a folder")
    if not overwrite and any((directory / name).exists() for name in (MODEL_CONFIG_FILE, MODEL_WEIGHTS_FILE)):
        raise FileExistsError(f"{directory}: already holds a model; pass --overwrite to replace it")
    atomic_write_safetensors(state, directory / MODEL_WEIGHTS_FILE, metadata)
    atomic_write_json(config, directory / MODEL_CONFIG_FILE)
    return directory


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file, with a clear error when it is not one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({exc}); re-export or re-download it") from None
    return state, metadata


def check_state_dict(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any], source: str) -> None:
    """Refuse missing, unexpected, non-tensor or mis-shaped entries, listing them."""
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            more = f" (and {len(keys) - KEYS_SHOWN} more)" if len(keys) > KEYS_SHOWN else ""
            problems.append(f"{len(keys)} {label} key(s): {', '.join(keys[:KEYS_SHOWN])}{more}")
    not_tensors = [k for k in expected if k in state and not isinstance(state[k], torch.Tensor)]
    if not_tensors:
        problems.append(f"non-tensor value(s) at {', '.join(not_tensors[:KEYS_SHOWN])}")
    shapes = [
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if isinstance(state.get(k), torch.Tensor) and state[k].shape != v.shape
    ]
    if shapes:
        problems.append(f"{len(shapes)} shape mismatch(es): {', '.join(shapes[:KEYS_SHOWN])}")
    if problems:
        raise ValueError(f"{source}: weights do not match the model: " + "; ".join(problems))


def load_weights(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Strictly load ``state`` into ``model`` (which may live on ``meta``), with clear errors."""
    expected = model.state_dict()
    check_state_dict(expected, state, source)
    converted = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(converted, strict=True, assign=True)


def read_official_state_dict(path: Path, wrapper_keys: tuple[str, ...] = (WRAPPER_KEY,)) -> dict[str, Any]:
    """A checkpoint's state dict: unwrapped from the first of ``{wrapper_key: ...}`` it has (default
    ``{"state_dict": ...}``), ``module.``/``_orig_mod.`` stripped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable weights-only PyTorch checkpoint ({first_line})") from None
    if isinstance(checkpoint, dict):
        wrapper = next((key for key in wrapper_keys if isinstance(checkpoint.get(key), dict)), None)
        checkpoint = checkpoint if wrapper is None else checkpoint[wrapper]
    if not isinstance(checkpoint, dict) or not checkpoint:
        raise ValueError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return {_strip_prefixes(str(key)): value for key, value in checkpoint.items()}


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key
