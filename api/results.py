"""Results of a finished predict job: one row per file, as JSON pages (keyset by path) or streamed CSV."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from graft.api.context import db
from graft.api.errors import APIError
from graft.shared import lifecycle
from graft.shared.models import Job, PredictionResult
from graft.shared.serializers import result_row

bp = Blueprint("results", __name__)

RESULTS_PAGE, RESULTS_MAX_PAGE, CSV_BATCH = 100, 1000, 1000
CSV_COLUMNS = ["path", "label", "confidence", "error"]


def _finished_predict_job(job_id: str) -> Job:
    job = db().get(Job, job_id)
    if job is None:
        raise APIError(404, f"no job with id {job_id}")
    if job.kind != "predict":
        raise APIError(400, f"job {job_id} is a {job.kind} job; only predict jobs have results")
    if job.status != lifecycle.SUCCEEDED:
        raise APIError(409, f"job {job_id} is {job.status}; results are available once it has succeeded",
                       job_status=job.status, job_error=job.error)
    return job


def _results_query(job_id: str, after: str | None, limit: int):  # noqa: ANN202 - a Select
    query = select(PredictionResult).where(PredictionResult.job_id == job_id).order_by(PredictionResult.path)
    if after is not None:
        query = query.where(PredictionResult.path > after)
    return query.limit(limit)


@bp.get("/jobs/<job_id>/results")
def job_results(job_id: str):  # noqa: ANN201
    """One row per file, sorted by path: JSON pages ({"items", "summary", "next"}) or ?format=csv (streamed)."""
    job = _finished_predict_job(job_id)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "csv"):
        raise APIError(400, "format must be json or csv", field="format")
    if fmt == "csv":
        return _csv_response(job)
    try:
        limit = int(request.args.get("limit", RESULTS_PAGE))
    except ValueError:
        raise APIError(400, "limit must be an integer", field="limit") from None
    if not 1 <= limit <= RESULTS_MAX_PAGE:
        raise APIError(400, f"limit must be in 1..{RESULTS_MAX_PAGE}", field="limit")
    after = request.args.get("after")
    rows = db().scalars(_results_query(job.id, after, limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = url_for("results.job_results", job_id=job.id, limit=limit, after=rows[-1].path) if more else None
    summary = (job.metrics or {}).get("summary", {})
    return jsonify({"job_id": job.id, "items": [result_row(r) for r in rows], "summary": summary, "next": nxt})


def _csv_rows(session: Session, job_id: str, with_top_k: bool) -> Iterator[str]:
    """CSV text in batches, keyset-paged by path; closes session when done."""
    try:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_COLUMNS + (["top_k"] if with_top_k else []))
        after = None
        while True:
            rows = session.scalars(_results_query(job_id, after, CSV_BATCH)).all()
            for r in rows:
                line = [r.path, r.label or "", "" if r.confidence is None else r.confidence, r.error or ""]
                writer.writerow(line + ([_json(r.top_k or [])] if with_top_k else []))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < CSV_BATCH:
                return
            after = rows[-1].path
            session.expunge_all()
    finally:
        session.close()


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _csv_response(job: Job) -> Response:
    session = current_app.extensions["graft_sessions"]()
    with_top_k = int(job.params.get("top_k", 1)) > 1
    headers = {"Content-Disposition": f'attachment; filename="predictions-{job.id}.csv"'}
    return Response(_csv_rows(session, job.id, with_top_k), mimetype="text/csv", headers=headers)
