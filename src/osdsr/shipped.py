"""Files shipped with osdsr: the configs (``configs/``) and the embedded default model (``weights/default/``).

The repository keeps one copy of each at its root, where ``osdsr train configs/<name>.yaml`` finds
them. A wheel (``pip install .``) carries them inside the package, as ``osdsr/configs`` and
``osdsr/weights`` (``pyproject.toml`` maps the folders there); a source checkout (editable install,
``PYTHONPATH=src``) has no such folders in the package and reads the repository's.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPOSITORY_ROOT = PACKAGE_ROOT.parents[1]  # src layout: <repository>/src/osdsr


def shipped_path(relative: str) -> Path:
    """``osdsr/<relative>`` of an installed wheel, else ``<repository>/<relative>`` of a source checkout.

    Raises FileNotFoundError naming both places when neither exists.
    """
    for root in (PACKAGE_ROOT, REPOSITORY_ROOT):
        if (root / relative).exists():
            return root / relative
    raise FileNotFoundError(
        f"{relative}: not found in the installed package ({PACKAGE_ROOT / relative}) nor in a source checkout "
        f"({REPOSITORY_ROOT / relative}); reinstall osdsr from a complete checkout (pip install .)"
    )
