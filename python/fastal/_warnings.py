"""Warnings attributed to the user's line: the first caller outside the fastal package, however
deep inside it the warning was raised (``fastal.torch.select`` calls a strategy which warns)."""

from __future__ import annotations

import sys
import warnings


def _in_fastal(frame) -> bool:
    """A frame of fastal's own code: by module name, which holds for every kind of install (a
    doctest's code, named ``<doctest ...>``, is the user's)."""
    name = frame.f_globals.get("__name__", "")
    ours = name == "fastal" or name.startswith("fastal.")
    return ours and not frame.f_code.co_filename.startswith("<")


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside fastal, so that a
    filter on the user's module (or pytest's location) sees their call."""
    level, frame = 2, sys._getframe(1)  # level 2: the caller of warn_user
    while frame is not None and _in_fastal(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level - 1 if frame is None else level)
