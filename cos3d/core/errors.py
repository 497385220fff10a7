"""User-facing errors.

Every error a user can cause (a bad path, a malformed file, a bad flag value) is raised as a
:class:`Cos3dError` whose message names the offending file or flag and says how to fix it. The CLI
prints the message as one line and exits with status 2; internal invariants stay ``assert``.
"""

from __future__ import annotations


class Cos3dError(Exception):
    """An error caused by user input; the message is one actionable line."""


class SceneFormatError(Cos3dError):
    """A scene folder or one of its files is missing or malformed."""


class MissingWeightsError(Cos3dError):
    """Model weights are not available; the message names the flag/env var and the offline alternative."""


def brief(exc: BaseException, limit: int = 120) -> str:
    """``"TypeName: first line of the message"``, cut at a word boundary with "…" past ``limit``
    characters: what a one-line error quotes of an underlying exception."""
    text = " ".join(str(exc).split("\n")[0].split())
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0] if " " in text[:limit] else text[:limit]
        text = cut.rstrip(",;:") + "…"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServeError(Cos3dError):
    """A request ``cos3d serve`` refuses or cannot answer: the message is one line, ``status`` its HTTP code
    (404 unknown run, 409 run not ready, 413 too large, 504 timed out, 503 unavailable...)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = int(status)
