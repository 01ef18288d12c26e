"""Settings that would be accepted and go wrong later stop start-up, naming the variable."""

from __future__ import annotations

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
