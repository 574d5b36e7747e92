"""The budget of SPEC section 5: the plan, its invariants, and callbacks run by it."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graceful_gunicorn import Lifecycle
from graceful_gunicorn._core.callbacks import Registration
from graceful_gunicorn._core.plan import GRACEFUL_REASONS, plan_shutdown, safety_margin
from graceful_gunicorn._core.settings import Settings, SettingsError
from graceful_gunicorn._gunicorn.check import Timeline
from graceful_gunicorn._gunicorn.server_settings import check_lifecycle_fits, graceful_plans

EPSILON = 1e-9


def noop() -> None:
    pass


def lifecycle_with(*timeouts: float | None, default: float = 5.0) -> Lifecycle:
    lifecycle = Lifecycle(callback_timeout=default)
    for timeout in timeouts:
        lifecycle.on_shutdown(timeout=timeout)(noop)
    return lifecycle


def test_six_callbacks_without_timeout_leave_the_drain_half_the_budget() -> None:
    """gunicorn's defaults (30 s, 1 s margin): the drain keeps 14.5 s, each callback 2.42 s."""
    plan = lifecycle_with(*[None] * 6).plan("terminate", graceful_timeout=30)
    assert plan.budget == 29.0
    assert plan.drain == pytest.approx(14.5)
    assert [c.keeps for c in plan.callbacks] == pytest.approx([14.5 / 6] * 6)
    assert plan.fits


def test_few_callbacks_without_timeout_keep_their_default() -> None:
    plan = lifecycle_with(None, None).plan("terminate", graceful_timeout=30)
    assert [c.keeps for c in plan.callbacks] == [5.0, 5.0]
    assert plan.drain == 19.0


def test_explicit_timeouts_are_kept_in_full_before_the_share() -> None:
    """The issue's app at graceful_timeout 15: one on_shutdown(timeout=2), three without."""
    plan = lifecycle_with(2, None, None, None).plan("terminate", graceful_timeout=15)
    assert plan.budget == 14.0
    assert plan.explicit == 2.0
    # half of 14 is 7; 2 s go to the explicit timeout, 5 s are shared by three
    assert sorted(c.keeps for c in plan.callbacks) == pytest.approx([5 / 3] * 3 + [2.0])
    assert plan.drain == pytest.approx(7.0)


def test_explicit_timeouts_over_half_take_the_drain_and_leave_no_share() -> None:
    plan = lifecycle_with(20, None).plan("terminate", graceful_timeout=30)
    assert [c.keeps for c in plan.callbacks] == [0.0, 20.0]  # newest first
    assert plan.drain == 9.0
    assert plan.fits


def test_explicit_timeouts_that_cannot_fit_share_half_the_budget_and_are_named() -> None:
    """A worker that serves anyway (after a reload) still drains for half of the budget."""
    plan = lifecycle_with(20, 10, None).plan("terminate", graceful_timeout=30)
    assert not plan.fits
    assert [c.keeps for c in plan.callbacks] == pytest.approx([0.0, 14.5 * 10 / 30, 14.5 * 20 / 30])
    assert plan.drain == pytest.approx(14.5)
    assert plan.problem() == (
        "the timeout= of the on_shutdown and after_shutdown callbacks add up to 30s (reason "
        "terminate), more than the 29s that graceful_timeout=30 leaves after its 1s safety "
        "margin: raise graceful_timeout or lower those timeouts"
    )


def test_decimal_timeouts_that_fit_exactly_fit() -> None:
    """2.7 + 5.4 in floating point is a hair over 8.1, what graceful_timeout=9 leaves."""
    assert lifecycle_with(2.7, 5.4).plan("terminate", graceful_timeout=9).fits


def test_a_reload_that_drops_the_setting_gives_the_lifecycle_its_own_timeout_back() -> None:
    """With --preload the master's lifecycle lives on across reloads: nothing is lost."""
    lifecycle = lifecycle_with(None, default=8.0)
    graceful_plans(lifecycle, Settings.load({}, {"GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "3"})[0], 30)
    assert lifecycle.default_timeout == 3.0
    (plan, *_) = graceful_plans(lifecycle, Settings.load({}, {})[0], 30)
    assert plan.callbacks[0].timeout == 8.0 and lifecycle.callback_timeout == 8.0


def test_a_small_graceful_timeout_without_callbacks_fits() -> None:
    for graceful_timeout in (0, 1, 5):
        plan = Lifecycle().plan("terminate", graceful_timeout=graceful_timeout)
        assert plan.fits and plan.problem() is None
        assert plan.drain == graceful_timeout - safety_margin(graceful_timeout)


def test_reasons_filter_what_a_plan_counts() -> None:
    lifecycle = Lifecycle()
    lifecycle.on_shutdown(timeout=10, reasons={"terminate"})(noop)
    assert lifecycle.plan("terminate", graceful_timeout=30).explicit == 10
    assert lifecycle.plan("reload", graceful_timeout=30).explicit == 0
    assert lifecycle.plan("reload", graceful_timeout=30).drain == 29


def test_a_quick_stop_has_no_drain_and_shares_its_budget() -> None:
    """A hanging on_shutdown(timeout=10) leaves after_shutdown its half."""
    plan = lifecycle_with(10, None).plan("quick", graceful_timeout=30, quick_timeout=2)
    assert (plan.budget, plan.drain) == (2.0, 0.0)
    assert [c.keeps for c in plan.callbacks] == [1.0, 1.0]
    assert plan.keep_after(plan.callbacks[0].registration) == 1.0
    assert plan.fits
    # the quick budget never outlives the master's deadline
    assert Lifecycle().plan("abort", graceful_timeout=1, quick_timeout=2).budget == 0.9


def test_the_lifecycle_keeps_its_own_callback_timeout_unless_the_setting_is_given() -> None:
    """Lifecycle(callback_timeout=8) under gunicorn: 8 s, unless the setting is given."""
    lifecycle = lifecycle_with(None, default=8.0)
    (plan, *_) = graceful_plans(lifecycle, Settings.load({}, {})[0], 30)
    assert plan.callbacks[0].timeout == 8.0
    given = Settings.load({}, {"GRACEFUL_SHUTDOWN_CALLBACK_TIMEOUT": "3"})[0]
    (plan, *_) = graceful_plans(lifecycle, given, 30)
    assert plan.callbacks[0].timeout == 3.0


def test_keep_after_is_what_the_later_callbacks_keep() -> None:
    lifecycle = Lifecycle()
    first = lifecycle.on_shutdown(noop)
    lifecycle.after_shutdown(timeout=3)(noop)
    plan = lifecycle.plan("terminate", graceful_timeout=30)
    newest_on_shutdown = plan.callbacks[0].registration
    assert newest_on_shutdown.func is first
    assert plan.keep_after(newest_on_shutdown) == 3.0
    assert plan.keep_after(plan.callbacks[1].registration) == 0.0


# -- invariants for any configuration ----------------------------------------------

timeouts = st.one_of(st.none(), st.floats(min_value=0, max_value=60, allow_nan=False))


@settings(max_examples=400, deadline=None)
@given(
    graceful_timeout=st.floats(min_value=0, max_value=300, allow_nan=False),
    callback_timeouts=st.lists(timeouts, max_size=12),
    default=st.floats(min_value=0, max_value=60, allow_nan=False),
)
def test_plan_invariants(
    graceful_timeout: float, callback_timeouts: list[float | None], default: float
) -> None:
    """For any configuration: the margin is kept, the drain keeps at least half of the
    budget unless explicit timeouts ask for more, explicit timeouts are kept in full
    when they fit, and nothing is planned past the budget."""
    registrations = [Registration.create(noop, "on_shutdown", t, None) for t in callback_timeouts]
    plan = plan_shutdown(
        registrations,
        default_timeout=default,
        reason="terminate",
        graceful_timeout=graceful_timeout,
        quick_timeout=2,
    )
    assert plan.margin == pytest.approx(min(1.0, graceful_timeout / 10))
    assert plan.budget == pytest.approx(graceful_timeout - plan.margin)
    assert plan.reserved <= plan.budget + EPSILON
    assert plan.drain + plan.reserved == pytest.approx(plan.budget, abs=1e-6)
    explicit = sum(t for t in callback_timeouts if t is not None)
    if explicit <= plan.budget / 2:
        assert plan.drain >= plan.budget / 2 - 1e-6
    assert plan.fits == (explicit <= plan.budget + 1e-9)
    for planned in plan.callbacks:
        assert 0 <= planned.keeps <= planned.timeout + EPSILON
        if plan.fits and planned.explicit:
            assert planned.keeps == planned.timeout
    assert plan.drain >= plan.budget / 2 - 1e-6 or explicit <= plan.budget + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    graceful_timeout=st.floats(min_value=0, max_value=120, allow_nan=False),
    callback_timeouts=st.lists(timeouts, max_size=8),
    quick=st.one_of(st.none(), st.floats(min_value=0, max_value=60, allow_nan=False)),
)
def test_check_rejects_exactly_what_the_server_rejects(
    graceful_timeout: float, callback_timeouts: list[float | None], quick: float | None
) -> None:
    """check's verdict (its Timeline's problems) and the server's start-up checks agree."""
    environ = {} if quick is None else {"GRACEFUL_QUICK_SHUTDOWN_TIMEOUT": repr(quick)}
    loaded = Settings.load({}, environ)[0]

    def server_rejects() -> bool:
        try:
            loaded.check_budget(graceful_timeout)  # the master, before any fork
            check_lifecycle_fits(lifecycle_with(*callback_timeouts), loaded, graceful_timeout)
        except SettingsError:
            return True
        return False

    def check_rejects() -> bool:
        try:
            loaded.check_budget(graceful_timeout)  # check.plan() loads the settings the same way
        except SettingsError:
            return True
        plans = graceful_plans(lifecycle_with(*callback_timeouts), loaded, graceful_timeout)
        timeline = Timeline(graceful_timeout, loaded, {p.reason: p for p in plans})
        return bool(timeline.problems())

    assert check_rejects() == server_rejects()


# -- callbacks run by the plan --------------------------------------------------------


def test_a_callback_without_timeout_that_hangs_cannot_eat_a_later_explicit_timeout() -> None:
    """1. three on_shutdown callbacks without timeout= hang 2. an after_shutdown(timeout=1)
    comes last 3. shutdown with a 4 s graceful_timeout.

    Result: the explicit callback still gets its whole second and completes; every
    callback ends before the budget (4 s less the 0.4 s margin).
    """
    lifecycle = Lifecycle(callback_timeout=5)
    release = threading.Event()
    finished = threading.Event()
    deadlines: list[float] = []

    @lifecycle.after_shutdown(timeout=1)
    def explicit(ctx: object) -> None:
        deadlines.append(ctx.deadline)  # type: ignore[attr-defined]
        time.sleep(0.8)
        finished.set()

    for _ in range(3):

        @lifecycle.on_shutdown
        def hang(ctx: object) -> None:
            deadlines.append(ctx.deadline)  # type: ignore[attr-defined]
            release.wait(10)

    started = time.monotonic()
    report = lifecycle.shutdown(timeout=4)
    release.set()
    assert finished.is_set()
    outcomes = [(c.phase, c.outcome) for c in report.callbacks]
    assert outcomes == [("on_shutdown", "timeout")] * 3 + [("after_shutdown", "ok")]
    assert max(deadlines) <= started + 3.6 + 0.05
    assert time.monotonic() - started < 3.6 + 0.5


def test_graceful_reasons_are_the_three_that_drain() -> None:
    assert GRACEFUL_REASONS == ("terminate", "reload", "recycle")
