"""JSON request bodies parsed strictly: NaN, Infinity, numbers that overflow to them, and integers beyond 64 bits
are a 400 naming the field that holds them (Python's json module accepts all of them, and a stored NaN makes
later answers invalid JSON). Installed as the app's JSON provider, so every request.get_json is strict."""
from __future__ import annotations

import json
import math
from typing import Any

from flask.json.provider import DefaultJSONProvider

from graft.api.errors import APIError

INT64 = (-(2**63), 2**63 - 1)
DIGITS64 = 20  # an integer written with more digits than this is beyond 64 bits (and int() of it is not free)


class _Refused:
    """A number the body holds that Graft refuses, kept where it was found so its field can be named."""

    def __init__(self, text: str, why: str) -> None:
        self.text, self.why = text, why


def _int(text: str) -> int | _Refused:
    if len(text.lstrip("-")) <= DIGITS64 and INT64[0] <= (value := int(text)) <= INT64[1]:
        return value
    return _Refused(text, "is an integer beyond 64 bits")


def _float(text: str) -> float | _Refused:
    value = float(text)
    return value if math.isfinite(value) else _Refused(text, "is not a finite number")


def _constant(text: str) -> _Refused:
    return _Refused(text, "is not a finite number (NaN and Infinity are not JSON)")


def _find(value: Any, path: str) -> tuple[str, _Refused] | None:  # noqa: ANN401 - any JSON value
    """The first refused number in value and its path (a.b[2]), depth first."""
    if isinstance(value, _Refused):
        return path, value
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _find(item, f"{path}.{key}" if path and isinstance(key, str) else
                      f"{path}[{key}]" if isinstance(key, int) else str(key))
        if found:
            return found
    return None


def loads(data: str | bytes) -> Any:  # noqa: ANN401 - any JSON value
    """data parsed as JSON; ValueError when it is not JSON, a 400 naming the field of a refused number."""
    value = json.loads(data, parse_int=_int, parse_float=_float, parse_constant=_constant)
    found = _find(value, "")
    if found is not None:
        field, refused = found
        raise APIError(400, f"{field or 'the body'}: {refused.text} {refused.why}", field=field or "body")
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with strict parsing (answers are written as before)."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:  # noqa: ANN401
        """Parse a request body strictly (see the module)."""
        return loads(s)
