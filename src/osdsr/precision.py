"""Float64 where exactness asks for it, on devices that have it.

Small tables and sums (noise schedules, statistics, random draws) are kept in float64 for exactness;
Apple's ``mps`` has no float64, so there they are float32. Tensors bound for such a device are cast
before they are moved (a float64 tensor cannot be moved to it).
"""

from __future__ import annotations

import torch

NO_FLOAT64_DEVICE_TYPES = frozenset({"mps"})


def exact_dtype(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on a device type without float64 (``mps``)."""
    return torch.float32 if torch.device(device).type in NO_FLOAT64_DEVICE_TYPES else torch.float64
