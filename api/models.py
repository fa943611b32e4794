"""Model endpoints: list trained models and read one."""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from api.db import db
from api.errors import APIError
from api.pagination import page
from shared.models import TrainedModel

bp = Blueprint("models", __name__)


def serialize_model(model: TrainedModel) -> dict[str, Any]:
    """The model resource as the API shows it."""
    return {
        "id": model.id,
        "job_id": model.job_id,
        "backbone": model.backbone,
        "classes": model.classes,
        "image_size": model.image_size,
        "metrics": model.metrics,
        "path": model.path,
        "created_at": model.created_at.isoformat(),
    }


@bp.get("/models")
def list_models():  # noqa: ANN201
    """Models, newest first, optionally ?job_id=."""
    query = select(TrainedModel).order_by(TrainedModel.created_at.desc(), TrainedModel.id.desc())
    filters = {}
    job_id = request.args.get("job_id")
    if job_id:
        query, filters["job_id"] = query.where(TrainedModel.job_id == job_id), job_id
    return page(query, "models.list_models", lambda rows: [serialize_model(m) for m in rows], **filters)


@bp.get("/models/<model_id>")
def get_model(model_id: str):  # noqa: ANN201
    """One model."""
    model = db().get(TrainedModel, model_id)
    if model is None:
        raise APIError(404, f"no model with id {model_id}")
    return jsonify(serialize_model(model))
