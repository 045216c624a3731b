"""Text forms of quantities: durations ("1h30m", "250ms") and sizes ("512MiB").

The config reads them (`config.values` adds the YAML side), and so does a job's client
(a declared worker size in its environment): the standard library only, so a job loads
neither the config nor YAML for them.

Parsers take the plain value YAML produced (int, float or str) and return seconds or bytes,
or raise ValueError with a message meant for a person. Booleans are rejected: YAML turns
`yes` into True, and True is an int in Python, so "restart after yes seconds" must not slip
through as 1.
"""

from __future__ import annotations

import math
import re

_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION_PART = re.compile(rf"\s*({_NUMBER})\s*(ms|us|d|h|m|s)\s*")
_DURATION_UNITS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6}
_PLAIN_NUMBER = re.compile(rf"\s*({_NUMBER})\s*")

# Sizes. "kB"/"MB"/"GB"/"TB" are decimal SI (1000**n), "KiB"/"MiB"/... are IEC (1024**n).
# A bare "K"/"M"/"G"/"T" is read as 1024**n: that is what people mean by "512M" of memory
# (and what systemd's MemoryMax= and ulimit mean). Unit letters are case-insensitive.
_SIZE = re.compile(rf"\s*({_NUMBER})\s*([a-zA-Z]*)\s*")
_SIZE_UNITS = {"": 1, "b": 1}
for _n, _letter in enumerate("kmgt", start=1):
    _SIZE_UNITS[_letter] = 1024**_n
    _SIZE_UNITS[f"{_letter}ib"] = 1024**_n
    _SIZE_UNITS[f"{_letter}b"] = 1000**_n

DURATION_HINT = "expected a duration such as 600s"
SIZE_HINT = "expected a size such as 512MiB"


def _shown(value: object) -> str:
    """How a rejected value appears in an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def parse_duration(value: object) -> float:
    """Seconds from 600, 1.5, "600s", "10m", "1h30m", "1h 30m", "250ms" or "600".

    Units: d, h, m, s, ms, us; parts add up. Raises ValueError for negatives, booleans,
    empty strings, unknown units, NaN and infinity.
    """
    seconds = _duration_seconds(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{DURATION_HINT}, got {_shown(value)}")
    return seconds


def _duration_seconds(value: object) -> float | None:
    """The number of seconds `value` spells, or None when it is no duration at all."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    plain = _PLAIN_NUMBER.fullmatch(value)
    if plain:
        return float(plain.group(1))
    total, pos = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(value) and pos > 0 else None


def format_duration(seconds: float) -> str:
    """A string `parse_duration` reads back to exactly `seconds`: "1h30m", "90s", "0.25s"."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"not a duration: {seconds!r}")
    if seconds != int(seconds) or seconds >= 2**53:
        return f"{seconds!r}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if n]
    return "".join(parts) or "0s"


def parse_size(value: object) -> int:
    """Bytes from 1048576, "512MiB", "1GiB", "64KiB", "10MB" (decimal) or "1.5G" (binary).

    Fractions are rounded to whole bytes. Raises ValueError for negatives, booleans,
    unknown units and empty strings.
    """
    if isinstance(value, bool):
        raise ValueError(f"{SIZE_HINT}, got {_shown(value)}")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, float) and math.isfinite(value) and value >= 0:
        return round(value)
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{SIZE_HINT}, got {_shown(value)}")
    number = float(match.group(1))
    if not math.isfinite(number):
        raise ValueError(f"{SIZE_HINT}, got {_shown(value)}")
    return round(number * _SIZE_UNITS[match.group(2).lower()])
