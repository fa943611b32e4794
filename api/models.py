"""Model endpoints: list trained models and read one."""
from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import select

from graft.api.context import db
from graft.api.errors import APIError
from graft.api.pagination import page
from graft.shared.models import TrainedModel
from graft.shared.serializers import serialize_model

bp = Blueprint("models", __name__)


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
