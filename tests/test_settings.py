"""Settings: defaults, config file and environment, validation, the timeout budget."""

from __future__ import annotations

from typing import Any

import pytest

from graceful_gunicorn._core.settings import Settings, SettingsError

NUMERIC = [
    "shutdown_delay",
    "shutdown_callback_timeout",
    "quick_shutdown_timeout",
    "reload_ready_timeout",
    "recycle_ready_timeout",
]

BAD_NUMBERS = ["abc", -1, "nan", "inf", 1e9, True]


def load(config: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    settings, warnings = Settings.load(config or {}, environ or {})
    assert warnings == []
    return settings


def env_name(setting: str) -> str:
    return "GRACEFUL_" + setting.upper()


def test_defaults() -> None:
    """With nothing configured, every setting has its documented default."""
    settings = load()

    assert settings == Settings()
    assert settings.shutdown_delay == 0.0
    assert settings.readiness_path is None
    assert settings.shutdown_callback_timeout == 5.0
    assert settings.quick_shutdown_timeout == 2.0
    assert settings.reload_ready_timeout == 30.0
    assert settings.recycle_ready_timeout == 30.0
    assert Settings.names() == [
        "shutdown_delay",
        "readiness_path",
        "shutdown_callback_timeout",
        "quick_shutdown_timeout",
        "shutdown_report_path",
        "reload_ready_timeout",
        "recycle_ready_timeout",
    ]


def test_values_from_the_config_file() -> None:
    """Names from the gunicorn config module become the settings; other names are ignored."""
    settings = load(
        {
            "shutdown_delay": 3,
            "readiness_path": "/ready",
            "shutdown_callback_timeout": "2.5",
            "quick_shutdown_timeout": 1,
            "workers": 4,
            "bind": "0.0.0.0:8000",
        }
    )

    assert settings == Settings(
        shutdown_delay=3.0,
        readiness_path="/ready",
        shutdown_callback_timeout=2.5,
        quick_shutdown_timeout=1.0,
    )
    assert isinstance(settings.shutdown_delay, float)


def test_config_value_none_means_default() -> None:
    """A config name set to None leaves the default in place."""
    assert load({"shutdown_delay": None, "readiness_path": None}) == Settings()


@pytest.mark.parametrize("setting", NUMERIC)
def test_environment_overrides_config(setting: str) -> None:
    """GRACEFUL_<NAME> wins over the same name in the config file."""
    settings = load({setting: 1}, {env_name(setting): " 0.75 "})
    assert getattr(settings, setting) == 0.75

    assert getattr(load({setting: 1}, {}), setting) == 1.0
    assert getattr(load({}, {env_name(setting): "4"}), setting) == 4.0


def test_environment_overrides_readiness_path() -> None:
    """GRACEFUL_READINESS_PATH wins over the config file; an empty one turns it off."""
    assert load({"readiness_path": "/a"}, {"GRACEFUL_READINESS_PATH": "/b"}).readiness_path == "/b"
    assert load({"readiness_path": "/a"}, {"GRACEFUL_READINESS_PATH": ""}).readiness_path is None


def test_unknown_graceful_variable_gives_a_warning() -> None:
    """An unknown GRACEFUL_* variable is reported as a warning naming it; others are ignored."""
    settings, warnings = Settings.load(
        {}, {"GRACEFUL_FOO": "1", "GRACEFUL_SHUTDOWN_DELAY": "2", "PATH": "/usr/bin"}
    )

    assert settings.shutdown_delay == 2.0
    assert len(warnings) == 1
    assert "GRACEFUL_FOO" in warnings[0]
    assert "GRACEFUL_SHUTDOWN_DELAY" in warnings[0]  # it lists the known names
    assert "\n" not in warnings[0]


def check_message(error: pytest.ExceptionInfo[SettingsError], name: str, raw: Any) -> None:
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(name + " ")
    assert repr(raw) in message


@pytest.mark.parametrize("raw", BAD_NUMBERS, ids=repr)
@pytest.mark.parametrize("setting", NUMERIC)
def test_numeric_setting_rejects_bad_config_value(setting: str, raw: Any) -> None:
    """A bad number in the config file raises one line naming the setting and the value."""
    with pytest.raises(SettingsError) as error:
        Settings.load({setting: raw}, {})
    check_message(error, setting, raw)


@pytest.mark.parametrize("raw", [str(v) for v in BAD_NUMBERS] + ["", "1,5", "1e400"], ids=repr)
@pytest.mark.parametrize("setting", NUMERIC)
def test_numeric_setting_rejects_bad_environment_value(setting: str, raw: str) -> None:
    """A bad number in the environment raises one line naming the variable and the value."""
    with pytest.raises(SettingsError) as error:
        Settings.load({setting: 1}, {env_name(setting): raw})
    check_message(error, env_name(setting), raw)


@pytest.mark.parametrize("raw", [0, "0", 86_400, "86400", 0.5])
def test_numeric_bounds_are_inclusive(raw: Any) -> None:
    """Zero and one day are both accepted."""
    assert load({"shutdown_delay": raw}).shutdown_delay == float(raw)


def test_settings_error_is_a_value_error() -> None:
    """SettingsError can be caught as ValueError."""
    with pytest.raises(ValueError, match="quick_shutdown_timeout"):
        Settings.load({"quick_shutdown_timeout": [1]}, {})


def test_huge_integer_is_a_settings_error() -> None:
    """An integer too large for a float is a SettingsError like any out-of-range number."""
    with pytest.raises(SettingsError, match="shutdown_delay"):
        Settings.load({"shutdown_delay": 10**400}, {})


@pytest.mark.parametrize("path", ["/ready", "/", "/health/ready", "/-/ready.json"])
def test_readiness_path_accepts_url_paths(path: str) -> None:
    """A path starting with '/' is accepted as it is."""
    assert load({"readiness_path": path}).readiness_path == path


@pytest.mark.parametrize(
    "path", ["ready", "health/ready", "/re ady", "/ready\t", "/ready?probe=1", "/ready#top", 5]
)
def test_readiness_path_rejects_anything_else(path: Any) -> None:
    """A path must start with '/' and contain no space, '?' or '#'."""
    with pytest.raises(SettingsError) as error:
        Settings.load({"readiness_path": path}, {})
    check_message(error, "readiness_path", path)

    if isinstance(path, str):
        with pytest.raises(SettingsError) as error:
            Settings.load({}, {"GRACEFUL_READINESS_PATH": path})
        check_message(error, "GRACEFUL_READINESS_PATH", path)


def test_budget_that_fits() -> None:
    """A default that cannot fit is not an error: callbacks without timeout= share the budget."""
    Settings().check_budget(30)
    Settings().check_budget(1)  # the unset quick_shutdown_timeout (2 s) shrinks to 0.9 s
    # 30 s keep a 1 s margin; 5 s keep 10%.
    given = frozenset({"shutdown_callback_timeout", "quick_shutdown_timeout"})
    Settings(shutdown_callback_timeout=300, quick_shutdown_timeout=29, given=given).check_budget(30)
    Settings(quick_shutdown_timeout=4.5, given=given).check_budget(5)


def loaded(**values: str) -> Settings:
    """Settings as the server loads them, given through the environment."""
    environ = {"GRACEFUL_" + name.upper(): value for name, value in values.items()}
    return Settings.load({}, environ)[0]


@pytest.mark.parametrize(
    ("settings", "graceful_timeout", "named"),
    [
        (loaded(quick_shutdown_timeout="29.5"), 30, "quick_shutdown_timeout=29.5"),
        (loaded(quick_shutdown_timeout="2"), 2, "quick_shutdown_timeout=2"),
    ],
)
def test_budget_that_does_not_fit(settings: Settings, graceful_timeout: float, named: str) -> None:
    """A quick budget, as set, larger than graceful_timeout minus the margin is refused."""
    with pytest.raises(SettingsError) as error:
        settings.check_budget(graceful_timeout)

    message = str(error.value)
    assert message.startswith(named + " does not fit in graceful_timeout=")
    assert "\n" not in message


def test_budget_message_uses_the_given_name() -> None:
    """The caller can say where the budget came from (a CLI flag, say)."""
    with pytest.raises(
        SettingsError, match=r"in --graceful-timeout=3: it must be at most 2\.7 seconds"
    ):
        loaded(quick_shutdown_timeout="3").check_budget(3, where="--graceful-timeout")


def test_the_lifecycle_keeps_its_own_callback_timeout_unless_the_setting_is_given() -> None:
    """Lifecycle(callback_timeout=8) is not replaced by the 5 s default."""
    assert Settings.load({}, {})[0].given_callback_timeout is None
    assert loaded(shutdown_callback_timeout="3").given_callback_timeout == 3.0
    assert Settings.load({"shutdown_callback_timeout": 5}, {})[0].given_callback_timeout == 5
