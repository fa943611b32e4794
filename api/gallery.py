"""Images for the dashboard, and a model's out-of-sample predictions: the files workers wrote, read by checked name.

The API decodes no image: workers write small JPEG thumbnails where they decode images anyway (inspection, the end
of training, the first chunks of a predict job). Each endpoint loads its object by id through the same function as
the object's other endpoints, then serves a file from the folder named by that object's id, never by a path from
the request (names are checked, symlinks resolved).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Response, jsonify, send_file, url_for
from sqlalchemy import select

from graft.api.context import config, db
from graft.api.datasets import get_dataset_or_404
from graft.api.errors import APIError
from graft.api.openapi import Blueprint
from graft.api.predict_jobs import get_model_or_404
from graft.api.results import finished_predict_job
from graft.api.schemas import PredictionArgs, ResultImageArgs, ValPredictionPage
from graft.shared.models import PredictionResult
from graft.shared.storage import model_dir
from graft.shared.thumbs import (
    THUMBS_DIR, dataset_thumbs_dir, job_thumbs_dir, read_predictions, result_thumb_name, thumb_file,
)

bp = Blueprint("gallery", __name__, description="Thumbnails of dataset, validation and result images; a model's "
                                                "out-of-sample predictions.")
JPEG = {"type": "string", "format": "binary"}
CACHE_S = 3600  # thumbnails never change under their name; the browser may keep them (private: a token fetched them)


def _send(path: Path | None, what: str) -> Response:
    if path is None:
        raise APIError(404, f"no thumbnail for {what}")
    response = send_file(path, mimetype="image/jpeg", max_age=CACHE_S)
    response.headers["Cache-Control"] = f"private, max-age={CACHE_S}"
    return response


@bp.get("/datasets/<id:dataset_id>/thumbnails/<string:name>")
@bp.response(200, JPEG, content_type="image/jpeg", description="a JPEG thumbnail of one of the class's images")
@bp.problems(401, 404)
def dataset_thumbnail(dataset_id: str, name: str) -> Response:
    """A thumbnail named in the dataset's `thumbnails` (written by the inspection)."""
    dataset = get_dataset_or_404(dataset_id)
    return _send(thumb_file(dataset_thumbs_dir(config().artifacts_dir, dataset.id), name), f"{name} in {dataset.id}")


def _matches(item: dict[str, Any], args: dict[str, Any]) -> bool:
    return ((args.get("true") is None or item["true"] == args["true"])
            and (args.get("predicted") is None or item["predicted"] == args["predicted"])
            and (not args["errors_only"] or item["true"] != item["predicted"]))


@bp.get("/models/<id:model_id>/predictions")
@bp.arguments(PredictionArgs, location="query")
@bp.response(200, ValPredictionPage)
@bp.problems(401, 404)
def model_predictions(args: dict[str, Any], model_id: str) -> Response:
    """The model's out-of-sample predictions on its validation images (the ones behind its val_acc), filtered."""
    model = get_model_or_404(model_id)
    folder = model_dir(config().artifacts_dir, model.id)
    stored = read_predictions(folder)
    if stored is None:
        raise APIError(404, f"model {model.id} has no stored predictions (trained before they were kept)",
                       code="no_predictions")
    items = [i for i in stored["items"] if _matches(i, args)]
    limit, offset = args["limit"], args["offset"]
    chosen = items[offset : offset + limit]
    filters = {k: args[k] for k in ("true", "predicted") if args.get(k) is not None}
    if args["errors_only"]:
        filters["errors_only"] = "true"
    nxt = (url_for("gallery.model_predictions", model_id=model.id, limit=limit, offset=offset + limit, **filters)
           if offset + limit < len(items) else None)
    thumbs = folder / THUMBS_DIR
    out = [{"index": i["index"], "file": i["file"], "true": i["true"], "predicted": i["predicted"],
            "confidence": i["confidence"], "correct": i["true"] == i["predicted"],
            "thumbnail": url_for("gallery.prediction_thumbnail", model_id=model.id, index=i["index"])
            if (thumbs / f"{i['index']}.jpg").is_file() else None} for i in chosen]
    return jsonify({"model_id": model.id, "total": stored["total"], "stored": len(stored["items"]),
                    "matching": len(items), "items": out, "next": nxt})


@bp.get("/models/<id:model_id>/predictions/<int:index>/thumbnail")
@bp.response(200, JPEG, content_type="image/jpeg", description="a JPEG thumbnail of one validation image")
@bp.problems(401, 404)
def prediction_thumbnail(model_id: str, index: int) -> Response:
    """The thumbnail of validation image `index` of the model's stored predictions."""
    model = get_model_or_404(model_id)
    folder = model_dir(config().artifacts_dir, model.id) / THUMBS_DIR
    return _send(thumb_file(folder, f"{index}.jpg"), f"validation image {index} of model {model.id}")


@bp.get("/jobs/<id:job_id>/results/thumbnail")
@bp.arguments(ResultImageArgs, location="query")
@bp.response(200, JPEG, content_type="image/jpeg", description="a JPEG thumbnail of one classified image")
@bp.problems(400, 401, 404, 409)
def result_thumbnail(args: dict[str, Any], job_id: str) -> Response:
    """The thumbnail of a result row's image (kept for up to 500 images a job: shared.thumbs)."""
    job = finished_predict_job(job_id)
    row = select(PredictionResult.id).where(PredictionResult.job_id == job.id, PredictionResult.path == args["path"])
    if db().scalar(row) is None:
        raise APIError(404, f"job {job.id} has no result for that path", field="path")
    folder = job_thumbs_dir(config().artifacts_dir, job.id)
    return _send(thumb_file(folder, result_thumb_name(args["path"])), "that result")
