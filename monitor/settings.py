"""All configuration in one validated object, read from `SYNCMON_*` at start-up."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "SYNCMON_"


class Settings(BaseSettings):
    """Contract section 6 plus the consumer's tuning knobs; every field is `SYNCMON_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kafka_bootstrap_servers: str = "localhost:9092"
    kafka_topic: str = "sync.lifecycle"
    kafka_group_id: str = "syncmon"
    kafka_dlq_topic: str = "sync.lifecycle.dlq"
    kafka_topic_partitions: Annotated[int, Field(ge=1, le=10_000)] = 6
    kafka_create_topics: bool = True
    kafka_max_batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    kafka_poll_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    kafka_session_timeout_ms: Annotated[int, Field(ge=1000)] = 10_000
    kafka_max_poll_interval_ms: Annotated[int, Field(ge=1000)] = 60_000
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = Field(default=None, repr=False)
    kafka_ssl_cafile: str | None = None

    redis_url: str = "redis://localhost:6379/0"
    redis_prefix: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")] = "syncmon"

    http_host: str = "127.0.0.1"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8000
    api_tokens: Annotated[tuple[str, ...], NoDecode] = Field(default=(), repr=False)
    api_max_page: Annotated[int, Field(ge=1, le=10_000)] = 500

    health_topic: str = "sync.health"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    retry_max_seconds: Annotated[float, Field(gt=0, le=300)] = 10.0

    @field_validator("api_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        """`SYNCMON_API_TOKENS=a,b` is a comma-separated list; blanks are dropped."""
        if isinstance(value, str):
            return tuple(t.strip() for t in value.split(",") if t.strip())
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    def kafka_security(self) -> dict[str, Any]:
        """SSL/SASL options passed through to every kafka-python client."""
        options: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile:
            options["ssl_cafile"] = self.kafka_ssl_cafile
        return options


class SettingsError(SystemExit):
    """Start-up stops with a message naming each bad variable."""


def load_settings(**overrides: Any) -> Settings:
    """Reads the environment; on error raises SettingsError naming the variables."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            name = ENV_PREFIX + str(error["loc"][0]).upper() if error["loc"] else ENV_PREFIX
            lines.append(f"  {name}: {error['msg']}")
        raise SettingsError("invalid syncmon settings:\n" + "\n".join(lines)) from None
