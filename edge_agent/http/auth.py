"""Who may read the endpoint: anyone on localhost when no token is set, else whoever sends
the token. Refused clients are logged once a minute per address, so a scraper with a stale
token does not flood the journal."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time

from edge_agent.config.secrets import read_secret
from edge_agent.config.settings import HttpSettings

log = logging.getLogger(__name__)

# A refused client's address is logged again after this many seconds at the earliest.
REFUSAL_LOG_EVERY_S = 60.0
BEARER = "Bearer "


class EndpointRefused(Exception):
    """The endpoint must not start as configured; the text says why, in one line."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def load_token(settings: HttpSettings) -> str | None:
    """The token clients must send, or None when none is needed. Raises EndpointRefused
    when the endpoint is bound beyond localhost with no token, or the token cannot be read."""
    if settings.token_file is None:
        if not is_loopback(settings.host):
            raise EndpointRefused(
                f"http.host {settings.host!r} is beyond localhost and http.token_file is not "
                "set: a token is required there"
            )
        return None
    try:
        return read_secret(settings.token_file)
    except ValueError as exc:
        raise EndpointRefused(f"http.token_file: {exc}") from None


class TokenGate:
    """Checks each request's token in constant time; logs refusals, rate-limited."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode() if token is not None else None
        self._logged: dict[str, float] = {}  # client address -> when last logged
        self._lock = threading.Lock()

    @property
    def required(self) -> bool:
        return self._token is not None

    def allows(self, authorization: str | None, query_token: str | None, client: str) -> bool:
        """`authorization`: the header's value; `query_token`: ?token= (what the page's
        image requests can carry). Logs a refusal, once a minute per client."""
        if self._token is None:
            return True
        given = query_token
        if authorization is not None and authorization.startswith(BEARER):
            given = authorization[len(BEARER) :].strip()
        if given is not None and hmac.compare_digest(given.encode(), self._token):
            return True
        self._log_refusal(client, "wrong token" if given is not None else "no token")
        return False

    def _log_refusal(self, client: str, why: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._logged.get(client)
            if last is not None and now - last < REFUSAL_LOG_EVERY_S:
                return
            # Forgetting addresses not seen for a minute keeps the table small.
            self._logged = {c: t for c, t in self._logged.items() if now - t < REFUSAL_LOG_EVERY_S}
            self._logged[client] = now
        log.warning(
            "http: refused %s (%s); further refusals of this address are not logged for %.0f s",
            client,
            why,
            REFUSAL_LOG_EVERY_S,
        )
