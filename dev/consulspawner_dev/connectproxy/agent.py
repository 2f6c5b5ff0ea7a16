"""The Consul HTTP calls the proxy makes, and the errors they raise.

The token never leaves the ``X-Consul-Token`` header.
"""

from __future__ import annotations

import json
import logging
import ssl
import urllib.error
import urllib.parse
import urllib.request

log = logging.getLogger("connectproxy")

BLOCKING_WAIT = 30.0  # seconds per blocking query (Consul's default is 5 min; shorter wakes for stop)


class ProxyError(Exception):
    """The proxy cannot run (bad configuration, refused token, unbindable port)."""


class ConsulHTTPError(Exception):
    def __init__(self, status: int, text: str, path: str):
        super().__init__(f"{status} {text.strip()} ({path})")
        self.status = status
        self.text = text


class TokenRefused(ProxyError):
    """The agent does not know our token: 403 "ACL not found"."""


def _check_refused(err: ConsulHTTPError) -> None:
    if err.status == 403 and "ACL not found" in err.text:
        raise TokenRefused(f"the Consul agent refused the proxy's token: {err}") from None


# ---------------------------------------------------------------------------------------- agent
class Agent:
    """The Consul HTTP calls the proxy makes. The token never leaves the X-Consul-Token header."""

    def __init__(self, http_addr: str, token: str | None = None, ca_file: str | None = None):
        addr = http_addr.strip()
        if "://" not in addr:
            addr = "http://" + addr
        self.base = addr.rstrip("/")
        self._token = token
        self._ssl = ssl.create_default_context(cafile=ca_file) if self.base.startswith("https:") else None

    def call(
        self, method: str, path: str, query: dict | None = None, body=None, timeout: float = 10.0
    ) -> tuple[object, dict]:
        """JSON body and headers; ConsulHTTPError for an HTTP error, OSError if unreachable."""
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if self._token:
            request.add_header("X-Consul-Token", self._token)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
                raw = response.read()
                return (json.loads(raw) if raw.strip() else None), dict(response.headers.items())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            e.close()
            raise ConsulHTTPError(e.code, text, path) from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach the Consul agent at {self.base}: {e.reason}") from None
        except (TimeoutError, ValueError) as e:
            raise OSError(f"bad answer from the Consul agent at {self.base}{path}: {e}") from None

    def blocking(self, path: str, index: int | None, wait: float = BLOCKING_WAIT, query: dict | None = None):
        """(body or None on 404, index, headers) of an index-based blocking query."""
        q = dict(query or {})
        if index:
            q.update(index=str(index), wait=f"{int(wait)}s")
        try:
            body, headers = self.call("GET", path, q, timeout=10.0 + wait * 1.1)
        except ConsulHTTPError as e:
            _check_refused(e)
            if e.status == 404:
                return None, index or 0, {}
            raise
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            new_index = int(lowered.get("x-consul-index") or 0)
        except ValueError:
            new_index = 0
        return body, new_index, lowered
