"""The three decorators, typed once for every object that has them.

``@x.before_shutdown``, ``@x.on_shutdown(timeout=5)``, ``@x.after_shutdown(reasons=
{"terminate"})``: bare or called, each returns the decorated function unchanged,
with its type. :class:`~graceful_gunicorn.Lifecycle` and the Flask extension
inherit them and say only what registering means for them
(:meth:`ShutdownDecorators._decorate`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any, overload

from .callbacks import CallbackT, check_timeout
from .context import Phase


class ShutdownDecorators:
    """``before_shutdown``, ``on_shutdown`` and ``after_shutdown``, bare or with options."""

    def register(
        self,
        phase: Phase,
        func: CallbackT,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> CallbackT:
        """Register ``func`` in ``phase``; return it unchanged."""
        raise NotImplementedError

    def _decorate(
        self,
        phase: Phase,
        func: CallbackT | None,
        timeout: float | None,
        reasons: Collection[str] | None,
    ) -> Any:
        if func is not None:
            return self.register(phase, func, timeout=timeout, reasons=reasons)
        # Validate the options now, not when the decorator is applied.
        check_timeout(timeout, f"{phase} timeout")

        def decorate(f: CallbackT) -> CallbackT:
            return self.register(phase, f, timeout=timeout, reasons=reasons)

        return decorate

    @overload
    def before_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def before_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def before_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 1: runs while the server still serves."""
        return self._decorate("before_shutdown", func, timeout, reasons)

    @overload
    def on_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def on_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def on_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 2: runs after in-flight requests drained."""
        return self._decorate("on_shutdown", func, timeout, reasons)

    @overload
    def after_shutdown(self, func: CallbackT) -> CallbackT: ...
    @overload
    def after_shutdown(
        self, *, timeout: float | None = None, reasons: Collection[str] | None = None
    ) -> Callable[[CallbackT], CallbackT]: ...
    def after_shutdown(
        self,
        func: CallbackT | None = None,
        *,
        timeout: float | None = None,
        reasons: Collection[str] | None = None,
    ) -> Any:
        """Register a callback of phase 3: the last word before the process exits."""
        return self._decorate("after_shutdown", func, timeout, reasons)


__all__ = ["ShutdownDecorators"]
