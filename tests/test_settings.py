"""Settings that would be accepted and go wrong later stop start-up, naming the variable."""

from __future__ import annotations

import os
from typing import Any

import pydantic_settings
import pytest

from monitor import settings as settings_module
from monitor.rules import Thresholds
from monitor.settings import SettingsError, load_settings


def refused(**values: Any) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**values)
    message = str(info.value)
    assert "Traceback" not in message and len(message.splitlines()) <= 3, message
    return message


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://localhost:notaport/0", "port"),
        ("redis://localhost:70000/0", "port"),
        ("http://localhost:6379/0", "redis://"),
        ("redis://localhost:6379/zero", "database number"),
        ("redis://localhost:6379/0?db=x", "'db'"),
        ("redis://localhost:6379/0?nonsense=1", "unknown query parameter"),
        ("rediss://localhost:6380/0?ssl_cert_reqs=maybe", "SSL"),
        ("unix://", "path"),
    ],
)
def test_bad_redis_url_is_refused_at_load(url: str, why: str) -> None:
    message = refused(redis_url=url)
    assert "SYNCMON_REDIS_URL" in message and why in message


def test_redis_url_errors_never_quote_the_url() -> None:
    # An unescaped "/" in a password moves part of it into the port; it must not be shown.
    message = refused(redis_url="redis://:s3cret/pw@host:6379/0")
    assert "SYNCMON_REDIS_URL" in message and "s3cret" not in message and "pw" not in message


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://redis",
        "redis://user:p%2Fw@host:6379/2",
        "rediss://host:6380/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_good_redis_urls_load(url: str) -> None:
    assert load_settings(redis_url=url).redis_url == url


def test_provider_overrides_that_are_not_json_name_the_variable() -> None:
    message = refused(health_provider_overrides="nope")
    assert "SYNCMON_HEALTH_PROVIDER_OVERRIDES: not valid JSON" in message
    assert "SYNCMON_HEALTH_PROVIDER_OVERRIDES" in refused(health_provider_overrides="[1]")
    loaded = load_settings(health_provider_overrides='{"acme": {"failures_error": 5}}')
    assert loaded.thresholds().for_provider("acme").failures_error == 5


def test_a_source_error_of_pydantic_settings_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Any JSON field a source fails to decode before validation (none today: the only one
    decodes itself) still ends in syncmon's one-screen message."""

    def failing(**_: Any) -> None:
        raise pydantic_settings.SettingsError(
            'error parsing value for field "health_provider_overrides" from source '
            '"EnvSettingsSource"'
        )

    monkeypatch.setattr(settings_module, "Settings", failing)
    assert "SYNCMON_HEALTH_PROVIDER_OVERRIDES: unreadable" in refused()


@pytest.mark.parametrize(
    "name", ["kafka_topic", "health_topic", "kafka_bootstrap_servers", "kafka_dlq_topic"]
)
@pytest.mark.parametrize("value", ["", "   "])
def test_empty_names_are_refused(name: str, value: str) -> None:
    assert f"SYNCMON_{name.upper()}" in refused(**{name: value})


def test_names_are_stripped() -> None:
    assert load_settings(kafka_topic=" events ").kafka_topic == "events"


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"kafka_dlq_topic": "sync.lifecycle"}, ("KAFKA_TOPIC", "KAFKA_DLQ_TOPIC")),
        ({"health_topic": "sync.lifecycle"}, ("KAFKA_TOPIC", "HEALTH_TOPIC")),
        ({"kafka_topic": "t", "health_topic": " t "}, ("KAFKA_TOPIC", "HEALTH_TOPIC")),
        ({"kafka_dlq_topic": "sync.health"}, ("KAFKA_DLQ_TOPIC", "HEALTH_TOPIC")),
    ],
)
def test_topics_must_differ(values: dict[str, Any], names: tuple[str, ...]) -> None:
    message = refused(**values)
    assert all(f"SYNCMON_{n}" in message for n in names), message


@pytest.mark.parametrize(
    ("values", "pair"),
    [
        ({"health_failures_warn": 4}, "FAILURES"),
        ({"health_failures_warn": 5, "health_failures_error": 2}, "FAILURES"),
        ({"health_freshness_warn_factor": 2.5}, "FRESHNESS"),
    ],
)
def test_warn_above_error_is_refused(values: dict[str, Any], pair: str) -> None:
    message = refused(**values)
    suffix = "_FACTOR" if pair == "FRESHNESS" else ""
    for level in ("WARN", "ERROR"):
        assert f"SYNCMON_HEALTH_{pair}_{level}{suffix}" in message, message


def test_warn_equal_to_error_loads() -> None:
    loaded = load_settings(health_failures_warn=3, health_freshness_warn_factor=2)
    assert loaded.thresholds().default.failures_warn == 3


@pytest.mark.parametrize(
    "overrides",
    [
        '{"acme": {"failures_warn": 4}}',  # above the global error (3)
        '{"acme": {"failures_warn": 2, "failures_error": 1}}',
        '{"acme": {"freshness_error_factor": 0.5}}',  # below the global warn (1)
    ],
)
def test_provider_overrides_keep_warn_at_or_below_error(overrides: str) -> None:
    message = refused(health_provider_overrides=overrides)
    assert "SYNCMON_HEALTH_PROVIDER_OVERRIDES: acme: " in message and "is above" in message


def test_thresholds_refuse_warn_above_error() -> None:
    with pytest.raises(ValueError, match="failures_warn"):
        Thresholds(failures_warn=4, failures_error=3)
    with pytest.raises(ValueError, match="freshness_warn_factor"):
        Thresholds(freshness_warn_factor=3)
    assert Thresholds(failures_warn=3, failures_error=3).failures_warn == 3


@pytest.mark.parametrize("value", [" , ", ",", " ", ",,, ,"])
def test_api_tokens_of_only_separators_are_refused(value: str) -> None:
    assert "SYNCMON_API_TOKENS" in refused(api_tokens=value)


def test_empty_api_tokens_still_mean_no_auth() -> None:
    assert load_settings(api_tokens="").api_tokens == ()
    assert load_settings().api_tokens == ()
    assert load_settings(api_tokens=" a , ,b ").api_tokens == ("a", "b")


def test_filter_lists_of_only_separators_are_refused() -> None:
    for name in ("metrics_providers_allow", "metrics_orgs_deny"):
        assert f"SYNCMON_{name.upper()}" in refused(**{name: " , "})
    assert load_settings(metrics_orgs_allow="").metrics_orgs_allow == ()


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("kafka:abc", "'kafka:abc': the port must be a number from 1 to 65535"),
        ("kafka:0", "'kafka:0': the port"),
        ("kafka:65536", "'kafka:65536': the port"),
        ("kafka:", "'kafka:': the port"),
        ("kafka:\uff19\uff10\uff19\uff12", "the port"),  # full-width digits: int() takes them
        ("b1:9092,kafka:abc", "'kafka:abc': the port"),
        ("b1:9092,,b2:9092", "an empty entry"),
        ("b1:9092,", "an empty entry"),
        ("no such host:9092", "'no such host:9092': not a host name"),
        ("kafka!:9092", "not a host name"),
        (":9092", "not a host name"),
        ("10.0.0.256:9092", "not a host name"),
        ("fd00::5:9092x", "IPv6 addresses go in brackets"),
        ("fe80::1%eth0", "IPv6 addresses go in brackets"),  # kafka-python cannot read it bare
        ("[::1:9092", "IPv6 addresses go in brackets"),
        ("[kafka]:9092", "'[kafka]:9092': not an IPv6 address"),
        ("[::1]:x", "the port"),
        ("[::1]9092", "the port"),
    ],
)
def test_bad_bootstrap_servers_are_refused_at_load(value: str, why: str) -> None:
    message = refused(kafka_bootstrap_servers=value)
    assert "SYNCMON_KAFKA_BOOTSTRAP_SERVERS: " in message and why in message, message


@pytest.mark.parametrize(
    "value",
    [
        "localhost:9092",
        "kafka",
        "b1:9092, b2:9093,b3",
        "10.0.0.7:9092",
        "[::1]:9092",
        "[fe80::1%eth0]:9092",
        "[::1]",
        "::1",  # kafka-python takes a bare IPv6 address, with the default port
        "fd00::5",
        "broker-1.kafka_internal.example.com:65535",
        "SASL_SSL://broker:9093",  # kafka-python drops such a prefix, so it is not refused
    ],
)
def test_good_bootstrap_servers_load(value: str) -> None:
    assert load_settings(kafka_bootstrap_servers=value).kafka_bootstrap_servers == value


def test_a_bad_bootstrap_server_in_the_environment_stops_start_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SYNCMON_KAFKA_BOOTSTRAP_SERVERS", "kafka:abc")
    assert "SYNCMON_KAFKA_BOOTSTRAP_SERVERS: 'kafka:abc': the port" in refused()


@pytest.mark.parametrize(
    "value", ["no such host!", "a b", "host/1", "", "[::1]", "-lead.example", "999.0.0.1"]
)
def test_bad_http_host_is_refused_at_load(value: str) -> None:
    assert "SYNCMON_HTTP_HOST: " in refused(http_host=value)


@pytest.mark.parametrize(
    "value", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "syncmon.internal", "my_host"]
)
def test_good_http_hosts_load(value: str) -> None:
    assert load_settings(http_host=value).http_host == value


def without_syncmon_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("SYNCMON_"):
            monkeypatch.delenv(name)


def test_unknown_syncmon_variables_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A misspelt variable (API_TOKEN for API_TOKENS) would otherwise run the API without auth."""
    without_syncmon_variables(monkeypatch)
    monkeypatch.setenv("SYNCMON_API_TOKEN", "planted-token-value")
    monkeypatch.setenv("SYNCMON_KAFKA_BOOTSTRAP_SERVER", "kafka:9092")
    monkeypatch.setenv("SYNCMON_NOTHING_LIKE_IT", "1")
    with caplog.at_level("WARNING", logger="monitor.settings"):
        loaded = load_settings()
    assert loaded.api_tokens == ()  # still loads: a warning, not an error
    warnings = sorted(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert len(warnings) == 3, warnings
    assert "SYNCMON_API_TOKEN is not a syncmon setting" in warnings[0]
    assert "did you mean SYNCMON_API_TOKENS?" in warnings[0]
    assert "did you mean SYNCMON_KAFKA_BOOTSTRAP_SERVERS?" in warnings[1]
    assert "SYNCMON_NOTHING_LIKE_IT" in warnings[2] and "did you mean" not in warnings[2]
    assert "planted-token-value" not in caplog.text


def test_variables_set_by_kubernetes_and_scripts_are_not_warned_about(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    injected = {
        "SYNCMON_SERVICE_HOST": "10.0.0.11",
        "SYNCMON_SERVICE_PORT": "8000",
        "SYNCMON_SERVICE_PORT_HTTP": "8000",
        "SYNCMON_PORT": "tcp://10.0.0.11:8000",
        "SYNCMON_PORT_8000_TCP": "tcp://10.0.0.11:8000",
        "SYNCMON_PORT_8000_TCP_ADDR": "10.0.0.11",
        "SYNCMON_SETUP": "demo",
        "SYNCMON_TEST_WORKERS": "0",
        "SYNCMON_FAULT_FIGURES": "/tmp/figures.jsonl",
        "SYNCMON_HTTP_PORT": "8001",
        "syncmon_log_level": "INFO",  # read as a setting: names are not case-sensitive
    }
    without_syncmon_variables(monkeypatch)
    for name, value in injected.items():
        monkeypatch.setenv(name, value)
    with caplog.at_level("WARNING", logger="monitor.settings"):
        assert load_settings().http_port == 8001
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.text


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"health_backfill_stall_seconds": 1e12}, "SYNCMON_HEALTH_BACKFILL_STALL_SECONDS"),
        ({"health_freshness_error_factor": 1e9}, "SYNCMON_HEALTH_FRESHNESS_ERROR_FACTOR"),
        (
            {"health_provider_overrides": '{"acme": {"no_activity_seconds": 1e12}}'},
            "SYNCMON_HEALTH_PROVIDER_OVERRIDES: acme.no_activity_seconds",
        ),
    ],
)
def test_a_threshold_too_large_for_a_deadline_stops_start_up(
    values: dict[str, Any], variable: str
) -> None:
    """An "effectively never" of 1e12 s passed start-up, then overflowed datetime in every
    sweep that met such a sync: the sweep stopped, and with it every sync's health."""
    message = refused(**values)
    assert variable in message and "less than or equal" in message, message
