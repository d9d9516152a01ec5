"""Typed settings for every service: a TOML file section, `CDN_<SERVICE>_*` variables, then flags.

Each service declares one pydantic model; `load_settings` merges the three sources
(later ones win) and turns any validation failure into a `SettingsError` that names
the offending setting, so a bad value stops the service at start-up.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class SettingsError(ValueError):
    """A setting is missing, unknown or has a value of the wrong kind."""


SECRET_NAMES = ("token", "password", "secret")


def shown(error: Mapping[str, Any]) -> str:
    """What an error message may show of the value a setting was given: nothing for an unknown setting or
    for the settings as a whole (the input is all of them then), nothing of a token or password, and any URL
    in it without its password (a Redis URL's, or its `sentinel_password`)."""
    where = error["loc"]
    if not where or error["type"] == "extra_forbidden":
        return ""
    if any(secret in str(part).lower() for part in where for secret in SECRET_NAMES):
        return " (got a value, not shown)"
    return f" (got {_without_passwords(error.get('input'))!r})"


def _without_passwords(value: Any) -> Any:
    if isinstance(value, str):
        scheme, sep, rest = value.partition("://")
        if sep and "@" in rest:  # everything up to the last @ may be the password (redis-py's reading)
            credentials, _, after = rest.rpartition("@")
            user, colon, _ = credentials.partition(":")
            rest = f"{user}:***@{after}" if colon else f"***@{after}"
        return re.sub(r"(password=)[^&]*", r"\1***", scheme + sep + rest)
    if isinstance(value, list | tuple):
        return [_without_passwords(v) for v in value]
    if isinstance(value, dict):
        return {k: "***" if any(s in str(k).lower() for s in SECRET_NAMES) else _without_passwords(v)
                for k, v in value.items()}
    return value


class ServiceSettings(BaseModel):
    """Base of every service's settings: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    section: ClassVar[str] = ""


class ServerSettings(ServiceSettings):
    """What runs a network service: the ASGI server and how many processes share its port."""

    server: Literal["uvicorn", "granian"] = Field("uvicorn", description="ASGI server: uvicorn (uvloop, httptools) or granian (experimental)")
    workers: int = Field(1, ge=1, le=64, description="processes sharing the port, each with its own state (uvicorn only)")

    @model_validator(mode="after")
    def _workers_can_share_the_work(self) -> ServerSettings:
        if self.workers > 1 and self.server != "uvicorn":
            raise ValueError("workers > 1 runs on server 'uvicorn' only")
        if self.workers > 1 and "redis" in type(self).model_fields and getattr(self, "redis") is None:
            raise ValueError("workers > 1 needs redis: workers learn of purges only through the purge log in Redis")
        return self


S = TypeVar("S", bound=ServiceSettings)


def env_prefix(cls: type[ServiceSettings]) -> str:
    return f"CDN_{cls.section.upper().replace('-', '_')}_"


def _env_value(raw: str) -> Any:
    # Lists and tables come as JSON; scalars stay strings for pydantic to coerce.
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def load_settings(
    cls: type[S],
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> S:
    """Build `cls` from the file's `[section]`, then the environment, then `overrides` (None = unset)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as f:
                document = tomllib.load(f)
        except OSError as exc:
            raise SettingsError(f"config file {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_file}: {exc}") from None
        section = document.get(cls.section, {})
        if not isinstance(section, dict):
            raise SettingsError(f"config file {config_file}: [{cls.section}] must be a table")
        data.update(section)
    environ = os.environ if environ is None else environ
    prefix = env_prefix(cls)
    for name in cls.model_fields:
        raw = environ.get(prefix + name.upper())
        if raw is not None:
            data[name] = _env_value(raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or cls.section
            problems.append(f"{cls.section}.{where}: {err['msg']}{shown(err)}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None
