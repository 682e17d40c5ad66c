"""Warnings attributed to the user's line: the first caller outside the fastal package, however
deep inside it the warning was raised (``fastal.torch.select`` calls a strategy which warns)."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` with the stack level of the first frame outside fastal, so that a
    filter on the user's module (or pytest's location) sees their call."""
    level, frame = 2, sys._getframe(1)  # level 2: the caller of warn_user
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level - 1 if frame is None else level)
