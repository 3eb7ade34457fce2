"""Where a model runs and in which precision: one place for every training and inference path."""

from __future__ import annotations

import torch


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """bf16 where the device has it (every CPU torch build; CUDA from Ampere on), else full precision."""
    if setting == "off":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        if setting == "bf16":
            raise ValueError("this GPU has no bf16; use --amp off")
        return None
    return torch.bfloat16
