"""What report.json records about where the audit ran: versions, platform, device and GPU,
and the precision it ran at (with a note when that is not the one asked for)."""

from __future__ import annotations

import platform
from typing import Any


def environment(device: str) -> dict[str, Any]:
    import numpy as np
    import torch

    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env


def precision_record(asked: str, ran: str) -> dict[str, str]:
    """``precision`` as it ran (for report.json), with a note when it is not what was asked."""
    record = {"precision": ran}
    if ran != asked:
        record["precision_asked"] = asked
        record["precision_note"] = (
            f"runtime.precision {asked} runs as {ran}: autocast is used on CUDA devices only"
        )
    return record
