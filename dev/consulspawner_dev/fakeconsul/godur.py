"""Go's duration and time text formats, as Consul reads and writes them.

Consul parses durations with Go's ``time.ParseDuration`` ("10s", "1m30s", "72h") and prints them
with ``time.Duration.String`` ("1m0s", "72h0m0s"); times are JSON-encoded as RFC 3339 with
nanoseconds and trailing zeros trimmed (Go's ``time.RFC3339Nano``). Error texts that embed
durations (ACL token expiry limits) must print them exactly as Go does.
"""

from __future__ import annotations

import datetime as _dt
import re

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,  # micro sign
    "\u03bcs": 1e-6,  # greek mu
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


class DurationError(ValueError):
    """Text that Go's time.ParseDuration would reject."""


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string ("1m30s"); raises DurationError like time.ParseDuration."""
    orig = text
    if not isinstance(text, str) or text == "":
        raise DurationError(f'time: invalid duration "{orig}"')
    sign = 1.0
    if text[0] in "+-":
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not text:
        raise DurationError(f'time: invalid duration "{orig}"')
    total = 0.0
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            # Go distinguishes a missing unit from garbage; both are a 400 for our callers.
            if re.match(r"(\d+(?:\.\d*)?|\.\d+)$", text[pos:]):
                raise DurationError(f'time: missing unit in duration "{orig}"')
            raise DurationError(f'time: invalid duration "{orig}"')
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def duration_value(value) -> float:
    """Seconds from a JSON duration field: Go accepts a duration string or integer nanoseconds."""
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise DurationError(f"time: invalid duration {value!r}")
    if isinstance(value, (int, float)):
        return float(value) / 1e9
    return parse_duration(str(value))


def format_duration(seconds: float) -> str:
    """Go's time.Duration.String() for a number of seconds ("24h0m0s", "1m30s", "500ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    neg = ns < 0
    ns = abs(ns)
    if ns < 1_000_000_000:
        # Sub-second durations use the largest unit that keeps an integer part.
        for unit, size in (("ms", 1_000_000), ("\u00b5s", 1_000), ("ns", 1)):
            if ns >= size:
                text = _trim(ns / size) + unit
                break
        return ("-" if neg else "") + text
    hours, rem = divmod(ns, 3_600_000_000_000)
    minutes, rem = divmod(rem, 60_000_000_000)
    secs = _trim(rem / 1e9)
    text = ""
    if hours:
        text += f"{hours}h"
    if hours or minutes:
        text += f"{minutes}m"
    text += f"{secs}s"
    return ("-" if neg else "") + text


def _trim(value: float) -> str:
    text = f"{value:.9f}".rstrip("0").rstrip(".")
    return text or "0"


def format_time(ts: float) -> str:
    """A Unix timestamp as Go's JSON encoding of a UTC time.Time (RFC 3339, nanoseconds trimmed)."""
    whole = int(ts // 1)
    frac_ns = round((ts - whole) * 1e9)
    if frac_ns >= 1_000_000_000:
        whole += 1
        frac_ns -= 1_000_000_000
    base = _dt.datetime.fromtimestamp(whole, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if frac_ns:
        base += "." + f"{frac_ns:09d}".rstrip("0")
    return base + "Z"


def format_time_seconds(ts: float) -> str:
    """RFC 3339 without fractional seconds (certificate validity times are whole seconds)."""
    return _dt.datetime.fromtimestamp(int(ts), tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str) -> float:
    """Unix timestamp from an RFC 3339 time string (Go's time.Time JSON decoding)."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    m = re.match(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$", text)
    if not m:
        raise ValueError(f'parsing time "{text}" as RFC 3339 failed')
    base = _dt.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S")
    tz = m.group(3)
    if tz == "Z":
        offset = _dt.timedelta(0)
    else:
        sign = 1 if tz[0] == "+" else -1
        offset = sign * _dt.timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    ts = base.replace(tzinfo=_dt.timezone(offset)).timestamp()
    if m.group(2):
        ts += float("0" + m.group(2))
    return ts
