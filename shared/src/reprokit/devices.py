"""Device guards.

nerfacc and gsplat ship CUDA kernels that are compiled just in time on first use. On a machine with nvcc but no GPU
that build starts and fails deep inside torch's cpp_extension, so every call into those kernels goes through
:func:`cuda_kernels_available` first and the CPU gets a pure-torch path instead.
"""

from __future__ import annotations

import os
import platform

import torch

#: Set to 1 to force the pure-torch paths even where CUDA works (useful to compare the two on one GPU machine).
DISABLE_ENV = "REPROKIT_DISABLE_CUDA_KERNELS"


def cuda_kernels_available() -> bool:
    """Return True when CUDA kernels of GPU-only libraries may be called.

    False without a usable CUDA device, or when ``REPROKIT_DISABLE_CUDA_KERNELS=1``. Never imports or builds the
    kernels itself.
    """
    if os.environ.get(DISABLE_ENV, "0") not in ("", "0", "false", "False"):
        return False
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def default_device() -> torch.device:
    """The device the pure-torch code should run on: CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_name() -> str:
    """Human-readable CPU model name (falls back to the platform string)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def accelerator_name() -> str:
    """The GPU name when CUDA is available, else ``"cpu"``."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"
