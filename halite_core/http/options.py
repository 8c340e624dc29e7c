"""The engine's ``http:`` options, checked in one place (:class:`HttpOptions`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from halite_core.config import ConfigError
from halite_core.http.limits import REQUEST_TIMEOUT

HTTP_OPTIONS = ("host", "port", "eauth", "certfile", "keyfile", "request_timeout",
                "proxy_headers")  # fmt: skip
# The headers a reverse proxy may be trusted to set, as proxy_headers names them.
PROXY_HEADERS = ("x-forwarded-for", "x-real-ip")


@dataclass(frozen=True)
class HttpOptions:
    """The engine's ``http:`` options, checked: :meth:`from_config` raises ConfigError
    naming the option, so that a bad one stops the engine at start with a clear error."""

    host: str = "127.0.0.1"
    port: int = 8765
    eauth: str = "pam"
    certfile: str | None = None
    keyfile: str | None = None
    request_timeout: float = REQUEST_TIMEOUT
    proxy_headers: str | None = None  # the header the proxy sets: one of PROXY_HEADERS

    @property
    def ssl(self) -> dict[str, str] | None:
        if self.certfile is None or self.keyfile is None:
            return None
        return {"certfile": self.certfile, "keyfile": self.keyfile}

    @classmethod
    def from_config(cls, config: object) -> HttpOptions:
        if not isinstance(config, Mapping):
            raise ConfigError(
                f"the engine's http must be a mapping of options ({', '.join(HTTP_OPTIONS)}),"
                f" not {config!r}"
            )
        unknown = sorted(str(key) for key in config if key not in HTTP_OPTIONS)
        if unknown:
            raise ConfigError(
                f"http: unknown option {unknown[0]!r}; known: {', '.join(HTTP_OPTIONS)}"
            )
        certfile = _optional_text(config, "certfile")
        keyfile = _optional_text(config, "keyfile")
        if (certfile is None) != (keyfile is None):
            given, missing = ("certfile", "keyfile") if keyfile is None else ("keyfile", "certfile")
            raise ConfigError(f"http: {given} without {missing}: HTTPS needs both")
        return cls(
            host=_text_option(config, "host", cls.host, "a host name or an address"),
            port=_port(config.get("port", cls.port)),
            eauth=_text_option(config, "eauth", cls.eauth, "the name of an external auth"),
            certfile=certfile,
            keyfile=keyfile,
            request_timeout=_seconds(config, "request_timeout", cls.request_timeout),
            proxy_headers=_proxy_header(config.get("proxy_headers")),
        )


def _text_option(config: Mapping[str, Any], key: str, default: str, what: str) -> str:
    value = config.get(key, default)
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"http:{key} must be {what}, not {value!r}")
    return value


def _optional_text(config: Mapping[str, Any], key: str) -> str | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"http:{key} must be the path of a PEM file, not {value!r}")
    return value


def _port(value: object) -> int:
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or not 1 <= number <= 65535:
        raise ConfigError(f"http:port must be a number from 1 to 65535, not {value!r}")
    return number


def _seconds(config: Mapping[str, Any], key: str, default: float) -> float:
    value = config.get(key, default)
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not number > 0 or math.isinf(number):
        raise ConfigError(f"http:{key} must be a number of seconds > 0, not {value!r}")
    return number


def _proxy_header(value: object) -> str | None:
    """The header a reverse proxy sets, or None (off). ``true`` is refused: which header
    the proxy sets decides which is safe to read (a proxy that appends X-Forwarded-For
    passes the client's own X-Real-Ip on)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in PROXY_HEADERS:
        return value.strip().lower()
    raise ConfigError(
        "http:proxy_headers must be false or the header the proxy sets, x-forwarded-for"
        " (the address it appends) or x-real-ip (the one it sets, replacing the"
        f" client's), not {value!r}"
    )
