"""Device selection: cuda, then mps, then cpu, with an explicit override."""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

DEVICE_ENV = "HYDRA_DEVICE"
PREFERENCES = ("auto", "cuda", "mps", "cpu")


def available_devices() -> list[str]:
    """List the device types this process can use, best first."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def default_dtype(device: torch.device) -> torch.dtype:
    """Return the dtype the device runs well: bfloat16 on cuda when supported, else float32."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def select_device(preference: str = "auto") -> tuple[torch.device, torch.dtype]:
    """Pick the device and dtype to run on.

    Args:
        preference: "auto" (cuda, then mps, then cpu; the `HYDRA_DEVICE`
            environment variable overrides it), "cuda", "cuda:N", "mps" or "cpu".

    Returns:
        (device, dtype).

    Raises:
        ValueError: `preference` is not a known device name.
        RuntimeError: the requested device is not available here.
    """
    if not isinstance(preference, str):
        raise ValueError(f"device preference must be a string, got {preference!r}")
    choice = preference.strip().lower()
    if choice == "auto":
        choice = os.environ.get(DEVICE_ENV, "auto").strip().lower() or "auto"
    available = available_devices()

    if choice == "auto":
        device = torch.device(available[0])
    else:
        device_type = choice.split(":", 1)[0]
        if device_type not in PREFERENCES[1:]:
            raise ValueError(
                f"unknown device {preference!r}; use one of {list(PREFERENCES)} or 'cuda:N'"
            )
        if device_type not in available:
            raise RuntimeError(
                f"device {choice!r} was requested but is not available; available devices: "
                f"{available}. Pass 'auto' or one of those."
            )
        try:
            device = torch.device(choice)
        except RuntimeError as error:
            raise ValueError(f"invalid device string {preference!r}: {error}") from error
        if device.type == "cuda" and device.index is not None:
            count = torch.cuda.device_count()
            if device.index >= count:
                raise RuntimeError(
                    f"device {choice!r} was requested but only {count} cuda device(s) exist; "
                    f"use cuda:0 .. cuda:{count - 1}"
                )

    dtype = default_dtype(device)
    logger.info("selected device %s with dtype %s", device, dtype)
    return device, dtype
