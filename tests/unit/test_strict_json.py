"""Strict JSON request bodies (graft.api.strictjson): every refused number is named by its field; the rest parses."""
from __future__ import annotations

import pytest

from graft.api.errors import APIError
from graft.api.strictjson import loads


@pytest.mark.parametrize(("body", "field"), [
    ('{"learning_rate": NaN}', "learning_rate"),
    ('{"epochs": Infinity}', "epochs"),
    ('{"epochs": -Infinity}', "epochs"),
    ('{"threshold": 1e999}', "threshold"),
    ('{"seed": 9223372036854775808}', "seed"),
    ('{"seed": -9223372036854775809}', "seed"),
    ('{"seed": ' + "9" * 5000 + "}", "seed"),  # past Python's int() digit limit: still named, not a parse error
    ('{"a": {"b": [1, 2, NaN]}}', "a.b[2]"),
    ("NaN", "body"),
])
def test_refused_numbers_name_their_field(body: str, field: str) -> None:
    with pytest.raises(APIError) as refused:
        loads(body)
    assert refused.value.status == 400 and refused.value.extra["field"] == field


def test_ordinary_json_parses_as_before() -> None:
    assert loads('{"seed": 9223372036854775807, "lr": 1e-3, "x": [-1, 0.5, null, true, "NaN"]}') == {
        "seed": 2**63 - 1, "lr": 1e-3, "x": [-1, 0.5, None, True, "NaN"]}
    with pytest.raises(ValueError):
        loads("{not json")
