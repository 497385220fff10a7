"""Choosing the torch device from a user's ``--device`` value."""

from __future__ import annotations

import torch

from cos3d.core.errors import Cos3dError


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto``/None → CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N`` as given.

    Raises :class:`Cos3dError` (naming ``--device``) for an unknown name or CUDA on a machine without it.
    """
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise Cos3dError(f"--device: unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise Cos3dError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return dev
