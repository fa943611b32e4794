"""Results of a finished predict job: one row per file, as JSON pages (keyset by path) or streamed CSV (text cells
that a spreadsheet would run as formulas are neutralised)."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterator

from flask import Response, current_app, jsonify, url_for
from sqlalchemy import select
from sqlalchemy.orm import Session

from graft.api.context import db
from graft.api.errors import APIError
from graft.api.openapi import Blueprint
from graft.api.owners import get_owned
from graft.api.schemas import ResultsArgs, ResultsPage
from graft.shared import lifecycle
from graft.shared.models import Job, PredictionResult
from graft.shared.serializers import public_text, result_row

bp = Blueprint("results", __name__, description="Results of a finished predict job, as JSON pages or CSV.")

CSV_BATCH = 1000
CSV_COLUMNS = ["path", "label", "confidence", "error", "ood_score", "reason"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def finished_predict_job(job_id: str) -> Job:
    """The caller's predict job once it succeeded: 404 for none, 400 for a training job, 409 until then."""
    job = get_owned(Job, job_id, "job")
    if job.kind != "predict":
        raise APIError(400, f"job {job_id} is a {job.kind} job; only predict jobs have results")
    if job.status != lifecycle.SUCCEEDED:
        raise APIError(409, f"job {job_id} is {job.status}; results are available once it has succeeded",
                       job_status=job.status, job_error=public_text(job.error, job.worker))
    return job


def _results_query(job_id: str, after: str | None, limit: int):  # noqa: ANN202 - a Select
    query = select(PredictionResult).where(PredictionResult.job_id == job_id).order_by(PredictionResult.path)
    if after is not None:
        query = query.where(PredictionResult.path > after)
    return query.limit(limit)


@bp.get("/jobs/<id:job_id>/results")
@bp.arguments(ResultsArgs, location="query")
@bp.response(200, ResultsPage, description="a page of rows (?format=json), or every row as CSV (?format=csv)")
@bp.alt_response(200, schema={"type": "string", "description": f"columns {','.join(CSV_COLUMNS)}[,top_k]"},
                 content_type="text/csv")
@bp.problems(400, 401, 404, 409)
def job_results(args: dict[str, Any], job_id: str) -> Response:
    """One row per file, sorted by path: JSON pages ({"items", "summary", "next"}) or ?format=csv (streamed)."""
    job = finished_predict_job(job_id)
    if args["format"] == "csv":
        return _csv_response(job)
    limit, after = args["limit"], args.get("after")
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
        # RFC 4180's CRLF: the writer then quotes a cell holding a bare CR, which would otherwise end the row
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(CSV_COLUMNS + (["top_k"] if with_top_k else []))
        after = None
        while True:
            rows = session.scalars(_results_query(job_id, after, CSV_BATCH)).all()
            for r in map(result_row, rows):
                line = [_text(r["path"]), _text(r["label"]), _blank(r["confidence"]), _text(r["error"]),
                        _blank(r["ood_score"]), _text(r["reason"])]
                writer.writerow(line + ([_json(r["top_k"])] if with_top_k else []))
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
            if len(rows) < CSV_BATCH:
                return
            after = rows[-1].path
            session.expunge_all()
    finally:
        session.close()


def _text(value: str | None) -> str:
    """A text cell a spreadsheet will not run: one that starts like a formula gets a leading ' (OWASP CSV injection).

    File names and class names come from users; numbers are written as numbers (a negative one is no formula)."""
    if not value:
        return ""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


def _blank(value: float | None) -> Any:
    return "" if value is None else value


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _csv_response(job: Job) -> Response:
    session = current_app.extensions["graft_sessions"]()
    with_top_k = int(job.params.get("top_k", 1)) > 1
    headers = {"Content-Disposition": f'attachment; filename="predictions-{job.id}.csv"'}
    return Response(_csv_rows(session, job.id, with_top_k), mimetype="text/csv", headers=headers)
