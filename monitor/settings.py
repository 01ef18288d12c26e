"""All configuration in one validated object, read from `SYNCMON_*` at start-up."""

from __future__ import annotations

import difflib
import ipaddress
import json
import logging
import os
import re
import socket
from collections.abc import Iterable
from itertools import combinations
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

import pydantic_settings
import redis
from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from monitor.health import ThresholdBook, Thresholds
from monitor.rules import MAX_FACTOR, MAX_SECONDS

log = logging.getLogger(__name__)

ENV_PREFIX = "SYNCMON_"
# Topics, group and brokers: surrounding blanks dropped, nothing left is an error.
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class Settings(BaseSettings):
    """Contract section 6 plus the consumer's tuning knobs; every field is `SYNCMON_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap_servers: Name = "localhost:9092"
    kafka_topic: Name = "sync.lifecycle"
    kafka_group_id: Name = "syncmon"
    kafka_dlq_topic: Name = "sync.lifecycle.dlq"
    kafka_topic_partitions: Annotated[int, Field(ge=1, le=10_000)] = 6
    kafka_create_topics: bool = True
    kafka_max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    kafka_poll_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    kafka_session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    kafka_max_poll_interval_ms: Annotated[int, Field(ge=1000)] = 60_000
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None  # client certificate (mutual TLS)
    kafka_ssl_keyfile: str | None = None
    kafka_ssl_password: str | None = Field(default=None, repr=False)  # of the key file
    kafka_ssl_check_hostname: bool = True

    # May hold a password (`redis://user:pass@host`), so it is kept out of reprs and logs.
    redis_url: str = Field(default="redis://localhost:6379/0", repr=False)
    redis_prefix: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = "syncmon"

    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_tokens: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    api_max_page: Annotated[int, Field(ge=1, le=10_000)] = 500

    health_topic: Name = "sync.health"
    health_continuous_interval_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 300
    health_freshness_warn_factor: Annotated[float, Field(gt=0, le=MAX_FACTOR)] = 1.0
    health_freshness_error_factor: Annotated[float, Field(gt=0, le=MAX_FACTOR)] = 2.0
    health_failures_warn: Annotated[int, Field(ge=1)] = 1
    health_failures_error: Annotated[int, Field(ge=1)] = 3
    health_rate_limit_window_seconds: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = 300
    health_backfill_stall_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 1800
    health_no_activity_seconds: Annotated[float, Field(gt=0, le=MAX_SECONDS)] = 600
    health_hysteresis_seconds: Annotated[float, Field(ge=0, le=MAX_SECONDS)] = 0
    # JSON, decoded by `_json` so a malformed value is reported like any other bad setting.
    health_provider_overrides: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict
    )
    health_tick_seconds: Annotated[float, Field(gt=0, le=60)] = 1.0
    # Processes that evaluate large sweeps (500+ syncs due) beside this one; 0: all in process.
    health_workers: Annotated[int, Field(ge=0, le=64)] = 2
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    retry_max_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0
    view_cache_size: Annotated[int, Field(ge=0)] = 50_000

    metrics_per_sync: Literal["all", "unhealthy", "none"] = "all"
    metrics_providers_allow: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_providers_deny: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_orgs_allow: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_orgs_deny: Annotated[tuple[str, ...], NoDecode] = ()
    metrics_basic_auth: str | None = Field(default=None, repr=False, pattern=r"^[^:]+:.+$")

    @field_validator(
        "api_tokens",
        "metrics_providers_allow",
        "metrics_providers_deny",
        "metrics_orgs_allow",
        "metrics_orgs_deny",
        mode="before",
    )
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        """Lists such as `SYNCMON_API_TOKENS=a,b` are comma-separated; blanks are dropped.
        Empty means none (for API_TOKENS: no auth); a value of only commas and blanks is
        refused rather than read as none."""
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(t, str) for t in items):
            return value
        kept = tuple(t.strip() for t in items if t.strip())
        if not kept and value:
            raise ValueError("has only commas and blanks; leave it empty or unset for none")
        return kept

    @field_validator("health_provider_overrides", mode="before")
    @classmethod
    def _json(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError as exc:  # its message gives the position, never the value
                raise ValueError(f"not valid JSON: {exc}") from None
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _bootstrap(cls, value: str) -> str:
        """Checked as kafka-python will split it, so a typo stops start-up instead of crashing
        the consumer over and over with an error that does not name the variable."""
        for entry in value.split(","):
            entry = entry.strip()
            why = _broker_error(entry) if entry else "an empty entry (a comma too many)"
            if why:
                raise ValueError(f"{entry!r}: {why}" if entry else why)
        return value

    @field_validator("http_host")
    @classmethod
    def _http_host(cls, value: str) -> str:
        """Syntax only (no DNS lookup): what uvicorn would fail to bind is caught here."""
        if value.startswith("["):
            raise ValueError("an IPv6 address goes without brackets here, such as ::1")
        if not _is_host(value):
            raise ValueError(f"{value!r} is not a host name or IP address (0.0.0.0 is all)")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        """Read here as redis-py will read it, so a bad URL stops start-up instead of the first
        connection. Messages never quote the URL: it may hold a password."""
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        parts = urlsplit(value)
        try:
            parts.port  # noqa: B018 - the property is the check
        except ValueError:
            raise ValueError("the port must be a number from 0 to 65535") from None
        db = unquote(parts.path).replace("/", "")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError("unix:// needs the socket's path")
        if parts.scheme != "unix" and db and not db.isdigit():
            raise ValueError("the path must be a database number, such as /0")
        try:  # builds, without connecting, the connection the URL describes
            redis.ConnectionPool.from_url(value).make_connection()
        except TypeError:
            raise ValueError("unknown query parameter") from None
        except (ValueError, redis.RedisError) as exc:  # names the query parameter at fault
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _distinct_topics(self) -> Settings:
        """The DLQ or the health topic being the lifecycle topic would feed syncmon its own
        output (a dead letter re-consumed forever)."""
        for one, other in combinations(("kafka_topic", "kafka_dlq_topic", "health_topic"), 2):
            if getattr(self, one) == getattr(self, other):
                raise ValueError(
                    f"{ENV_PREFIX}{one.upper()} and {ENV_PREFIX}{other.upper()} are the "
                    "same topic; they must differ"
                )
        return self

    @model_validator(mode="after")
    def _coherent_kafka_security(self) -> Settings:
        """Credentials the protocol would silently not use are an error, not a surprise."""
        sasl = self.kafka_security_protocol.startswith("SASL_")
        ssl = self.kafka_security_protocol.endswith("SSL")
        sasl_set = [
            n
            for n in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
            if getattr(self, n) is not None
        ]
        ssl_set = [
            n
            for n in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
            if getattr(self, n) is not None
        ]
        if sasl and len(sasl_set) < 3:
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                f"{ENV_PREFIX}KAFKA_SASL_MECHANISM, _SASL_USERNAME and _SASL_PASSWORD"
            )
        if sasl_set and not sasl:
            raise ValueError(
                f"{ENV_PREFIX}{sasl_set[0].upper()} is set but {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL"
                " is not SASL_PLAINTEXT or SASL_SSL"
            )
        if ssl_set and not ssl:
            raise ValueError(
                f"{ENV_PREFIX}{ssl_set[0].upper()} is set but {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL"
                " is not SSL or SASL_SSL"
            )
        if (self.kafka_ssl_certfile is None) != (self.kafka_ssl_keyfile is None):
            raise ValueError(
                f"{ENV_PREFIX}KAFKA_SSL_CERTFILE and {ENV_PREFIX}KAFKA_SSL_KEYFILE go together"
            )
        return self

    @model_validator(mode="after")
    def _valid_thresholds(self) -> Settings:
        """Builds every provider's thresholds once so a bad override fails at start-up."""
        self.thresholds()
        return self

    def thresholds(self) -> ThresholdBook:
        """Health thresholds: the global ones and each provider's overrides."""
        names = Thresholds.model_fields
        try:
            base = Thresholds(**{n: getattr(self, f"health_{n}") for n in names})
        except ValidationError as exc:  # fields are valid alone: what is left is how they pair
            message = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise ValueError(  # named as the variables that set them
                re.sub(r"\b[a-z_]+\b", lambda m: _env_name(m.group(), names), message)
            ) from None
        per_provider = {}
        for provider, overrides in self.health_provider_overrides.items():
            unknown = set(overrides) - set(names)
            if unknown:
                raise ValueError(
                    f"SYNCMON_HEALTH_PROVIDER_OVERRIDES: {provider}: unknown {sorted(unknown)}"
                )
            try:
                per_provider[provider] = Thresholds(**{**base.model_dump(), **overrides})
            except ValidationError as exc:
                first = exc.errors(include_url=False)[0]
                where = f"{provider}.{first['loc'][0]}" if first["loc"] else provider
                message = first["msg"].removeprefix("Value error, ")
                raise ValueError(f"SYNCMON_HEALTH_PROVIDER_OVERRIDES: {where}: {message}") from None
        return ThresholdBook(base, per_provider)

    def kafka_security(self) -> dict[str, Any]:
        """SSL/SASL options passed through to every kafka-python client (consumer, producers,
        admin), under kafka-python's own names."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_security_protocol.endswith("SSL"):
            options["ssl_check_hostname"] = self.kafka_ssl_check_hostname
            for name in ("cafile", "certfile", "keyfile", "password"):
                value = getattr(self, f"kafka_ssl_{name}")
                if value is not None:
                    options[f"ssl_{name}"] = value
        return options


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")  # `_`: compose service names have it
_PORT = "the port must be a number from 1 to 65535"


def _is_host(host: str) -> bool:
    """An IP address, or dot-separated labels of letters, digits, `-` and `_` (the last one not
    all digits: `999.1.1.1` is a bad address, not a name)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.removesuffix(".").split(".")
        named = all(_LABEL.fullmatch(label) for label in labels) and not labels[-1].isdigit()
        return len(host) <= 253 and named
    return True


def _broker_error(entry: str) -> str | None:
    """Why one bootstrap entry (`host`, `host:port` or `[ipv6]:port`) is unusable, if it is."""
    address = re.sub(r"^[A-Za-z_]+://", "", entry)  # kafka-python drops a protocol prefix
    port: str | None = None
    if address.startswith("["):
        host, bracket, rest = address[1:].partition("]")
        if not bracket:
            return "IPv6 addresses go in brackets: [::1]:9092"
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return "not an IPv6 address"
        if rest and not rest.startswith(":"):
            return _PORT
        port = rest[1:] if rest else None
    elif address.count(":") > 1:
        try:  # kafka-python takes a bare one (port 9092), as inet_pton does: no `%scope`
            socket.inet_pton(socket.AF_INET6, address)
        except OSError:
            return "more than one ':'; IPv6 addresses go in brackets: [::1]:9092"
    else:
        host, colon, rest = address.partition(":")
        if not _is_host(host):
            return "not a host name or IP address"
        port = rest if colon else None
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return _PORT
    return None


def _env_name(word: str, thresholds: Iterable[str]) -> str:
    return f"{ENV_PREFIX}HEALTH_{word.upper()}" if word in thresholds else word


def redis_client(settings: Settings, socket_timeout: float = 5) -> redis.Redis:
    """Short timeouts so an unreachable Redis is noticed and retried, not waited on forever."""
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=3,
        health_check_interval=15,
    )


def redis_location(url: str) -> str:
    """The Redis URL without credentials or query: what messages may show."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    host = parts.hostname or "localhost"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class SettingsError(SystemExit):
    """Start-up stops with a message naming each bad variable."""


_FIELDS = sorted(name.upper() for name in Settings.model_fields)
# SYNCMON_* names that are not settings: what Kubernetes injects for a service named syncmon
# (SYNCMON_SERVICE_HOST, SYNCMON_PORT_8000_TCP, ...) and what the scripts and tests read.
_NOT_SETTINGS = re.compile(
    rf"{ENV_PREFIX}(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\w+)?|SETUP|TEST_WORKERS|FAULT_FIGURES)"
)


def warn_unknown_variables() -> None:
    """A misspelt variable is otherwise silently ignored: SYNCMON_API_TOKEN (for API_TOKENS)
    would run the API without auth. A warning, not an error: the environment is shared."""
    for name in sorted(os.environ):
        upper = name.upper()  # pydantic-settings reads names in any case
        if not upper.startswith(ENV_PREFIX) or _NOT_SETTINGS.fullmatch(upper):
            continue
        field = upper.removeprefix(ENV_PREFIX)
        if field in _FIELDS:
            continue
        close = difflib.get_close_matches(field, _FIELDS, n=1)
        hint = f"; did you mean {ENV_PREFIX}{close[0]}?" if close else ""
        log.warning("%s is not a syncmon setting and is ignored%s", name, hint)


def load_settings(**overrides: Any) -> Settings:
    """Reads the environment; on error raises SettingsError naming the variables."""
    warn_unknown_variables()
    try:
        return Settings(**overrides)
    except pydantic_settings.SettingsError as exc:
        # A source failed before validation, e.g. a JSON field that is not JSON.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{field.group(1).upper()}" if field else "a SYNCMON_ variable"
        cause = exc.__cause__
        why = (
            f"not valid JSON: {cause}" if isinstance(cause, json.JSONDecodeError) else "unreadable"
        )
        raise SettingsError(f"invalid syncmon settings:\n  {name}: {why}") from None
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: " if error["loc"] else ""
            lines.append(f"  {name}{error['msg'].removeprefix('Value error, ')}")
        raise SettingsError("invalid syncmon settings:\n" + "\n".join(lines)) from None
