"""A number of seconds, read one way everywhere.

A callback's ``timeout=``, ``Lifecycle(callback_timeout=...)``, the arguments
of ``Lifecycle.shutdown`` and every seconds setting (``shutdown_delay``,
``GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT``, ...) go through :func:`parse_seconds`:
finite and not negative; a setting, read from text, also at most
:data:`MAX_SECONDS`.
"""

from __future__ import annotations

import math

#: A number of seconds larger than this is a mistake, not a plan.
MAX_SECONDS = 86_400.0


def parse_seconds(raw: object, what: str, *, text: bool = False) -> float:
    """``raw`` as seconds; ``what`` names it in the error.

    Code passes an ``int`` or a ``float`` (anything else, a ``bool`` or a
    ``"5"`` too, is a ``TypeError``), finite and not negative. With ``text``,
    a setting may also be text or any number ``float()`` reads, up to
    :data:`MAX_SECONDS` (then every bad value is a ``ValueError``). Out of
    range, ``NaN`` and infinities are a ``ValueError``.
    """
    maximum = MAX_SECONDS if text else math.inf
    bound = f"between 0 and {MAX_SECONDS:g}" if text else ">= 0"
    expected = f"{what} must be a number of seconds {bound}, got {raw!r}"
    if isinstance(raw, bool) or not (text or isinstance(raw, (int, float))):
        raise (ValueError if text else TypeError)(expected)
    try:
        value = float(raw.strip() if isinstance(raw, str) else raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ValueError(expected) from None
    if math.isnan(value) or math.isinf(value) or not 0 <= value <= maximum:
        raise ValueError(expected)
    return value


__all__ = ["MAX_SECONDS", "parse_seconds"]
