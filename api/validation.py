"""Validate JSON request bodies: unknown fields and wrong types are 400s that name the field."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import request

from api.errors import APIError


@dataclass(frozen=True)
class Field:
    """One accepted field: its type, default, and bounds or choices."""

    type: type
    default: Any = None
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False


def _type_ok(value: Any, kind: type) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "request body must be a JSON object (Content-Type: application/json)")
    return body


def validate(body: dict[str, Any], schema: dict[str, Field]) -> dict[str, Any]:
    """Check body against schema and return it with defaults filled in."""
    unknown = sorted(set(body) - set(schema))
    if unknown:
        raise APIError(400, f"unknown field: {unknown[0]}", field=unknown[0], allowed=sorted(schema))
    out: dict[str, Any] = {}
    for name, spec in schema.items():
        if name not in body:
            if spec.required:
                raise APIError(400, f"missing required field: {name}", field=name)
            out[name] = spec.default
            continue
        value = body[name]
        if value is None and spec.nullable:
            out[name] = None
            continue
        if not _type_ok(value, spec.type):
            raise APIError(400, f"field {name} must be of type {spec.type.__name__}", field=name)
        if spec.choices is not None and value not in spec.choices:
            raise APIError(400, f"field {name} must be one of {list(spec.choices)}", field=name)
        if spec.minimum is not None and value < spec.minimum:
            raise APIError(400, f"field {name} must be >= {spec.minimum}", field=name)
        if spec.maximum is not None and value > spec.maximum:
            raise APIError(400, f"field {name} must be <= {spec.maximum}", field=name)
        out[name] = float(value) if spec.type is float else value
    return out


TRAIN_SCHEMA: dict[str, Field] = {
    "data_dir": Field(str, None, nullable=True),  # exactly one of data_dir and dataset_id (api.datasets)
    "dataset_id": Field(str, None, nullable=True),
    "backbone": Field(str, "resnet18", choices=("resnet18", "efficientnet_lite0")),
    "pretrained": Field(bool, True),
    "epochs": Field(int, 10, minimum=1, maximum=500),
    "batch_size": Field(int, 32, minimum=1, maximum=1024),
    "learning_rate": Field(float, 1e-3, minimum=1e-7, maximum=1.0),
    "image_size": Field(int, 224, minimum=32, maximum=1024),
    "val_split": Field(float, 0.2, minimum=0.0, maximum=0.9),
    "seed": Field(int, 0, minimum=0, maximum=2**31 - 1),
    "freeze_epochs": Field(int, None, minimum=0, maximum=500, nullable=True),
    "mode": Field(str, "auto", choices=("auto", "linear", "finetune", "full")),
    "time_budget_s": Field(float, None, minimum=1.0, maximum=7 * 24 * 3600, nullable=True),
    "patience": Field(int, 3, minimum=0, maximum=500),
    "views": Field(int, 3, minimum=0, maximum=16),
}


PREDICT_SCHEMA: dict[str, Field] = {
    "model_id": Field(str, required=True),
    "input_dir": Field(str, None, nullable=True),
    "upload_id": Field(str, None, nullable=True),
    "top_k": Field(int, 1, minimum=1, maximum=1000),
    "threshold": Field(float, None, minimum=0.0, maximum=1.0, nullable=True),
    "recursive": Field(bool, True),
    "chunk_size": Field(int, 256, minimum=1, maximum=100_000),
    "precision": Field(str, "fp32", choices=("fp32", "bf16")),
    # fp32 inference runtime (worker.core.runtimes.RUNTIMES); bf16 always runs on torch. null: the server's default.
    "runtime": Field(str, None, nullable=True, choices=("openvino", "torch")),
}


def form_values(form: dict[str, str], schema: dict[str, Field]) -> dict[str, Any]:
    """Multipart form strings converted to the schema's types where they parse (validate() reports the rest)."""
    out: dict[str, Any] = {}
    for name, raw in form.items():
        spec = schema.get(name)
        value: Any = raw
        if spec is not None and spec.nullable and raw.strip().lower() in ("", "null", "none"):
            value = None
        elif spec is not None and spec.type is bool and raw.strip().lower() in ("true", "1", "yes", "false", "0", "no"):
            value = raw.strip().lower() in ("true", "1", "yes")
        elif spec is not None and spec.type in (int, float):
            try:
                value = spec.type(raw)
            except ValueError:
                pass
        out[name] = value
    return out
