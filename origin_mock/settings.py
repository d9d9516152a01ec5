"""Settings of the origin mock (`[origin]` in the config file, `CDN_ORIGIN_*` in the environment)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from cdn.config import ServiceSettings


class OriginSettings(ServiceSettings):
    section = "origin"

    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(9000, ge=0, le=65535, description="port to listen on")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("warning", description="server log level")
