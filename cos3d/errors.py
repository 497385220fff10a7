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
