"""Marshmallow schemas of every request and response: they validate requests and generate the OpenAPI document.

Request bodies are built from graft.shared.params (the one home of each parameter's type, default, bounds and
choices), so the validation, the spec, the worker's TrainSpec and the CLI cannot drift apart.
Responses are documentation: the handlers serialize with graft.shared.serializers, and the contract test
(tests/service/test_contract.py) checks that what they send matches these schemas.
"""
from __future__ import annotations

from typing import Any

from flask_smorest.fields import Upload
from marshmallow import INCLUDE, Schema, fields, validate

from graft.api.errors import REQUIRED, UNKNOWN
from graft.api.pagination import MAX_OFFSET, MAX_PAGE, RESULTS_MAX_PAGE, RESULTS_PAGE
from graft.shared import lifecycle
from graft.shared.accuracy import SOURCES
from graft.shared.exports import EXPORT_FORMATS
from graft.shared.models import DATASET_STATUSES, SERVER_PATH, UPLOAD
from graft.shared.params import DATASET_PATH_PARAMS, PREDICT_PARAMS, TRAIN_PARAMS, Param
from graft.shared.webhooks import RESULTS as WEBHOOK_RESULTS


# PostgreSQL cannot store or even compare a NUL character: refused up front, and said so in the spec (a pattern).
NO_NUL = validate.Regexp(r"^[^\x00]*$", error="must not contain NUL characters")


class StrictInteger(fields.Integer):
    """An integer that is a JSON integer: no bool, no 3.0, no "3" (a JSON body says what it means)."""

    def __init__(self, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:  # noqa: ANN401
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictFloat(fields.Float):
    """A number that is a JSON number (an integer is accepted and becomes a float), never a bool or a string."""

    def _validated(self, value: Any) -> float:  # noqa: ANN401
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._validated(value)


class StrictBoolean(fields.Boolean):
    """true or false, not 1 or "yes" (multipart strings are converted by validation.form_values first)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:  # noqa: ANN401
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


FIELDS: dict[type, type[fields.Field]] = {int: StrictInteger, float: StrictFloat, bool: StrictBoolean,
                                          str: fields.String}


def param_field(param: Param) -> fields.Field:
    """The marshmallow field of one Param: its type, default, bounds, choices and help, nothing restated."""
    checks: list[Any] = [NO_NUL] if param.type is str else []
    if param.choices is not None:
        checks.append(validate.OneOf(param.choices, error=f"must be one of {list(param.choices)}"))
    if param.minimum is not None:
        checks.append(validate.Range(min=param.minimum, error=f"must be >= {param.minimum}"))
    if param.maximum is not None:
        checks.append(validate.Range(max=param.maximum, error=f"must be <= {param.maximum}"))
    if param.max_length is not None:
        checks.append(validate.Length(max=param.max_length, error=f"must be at most {param.max_length} characters"))
    extra: dict[str, Any] = {} if param.required else {"load_default": param.default}
    wrong = f"must be of type {param.type.__name__}"
    return FIELDS[param.type](required=param.required, allow_none=param.nullable, validate=checks,
                              metadata={"description": param.help, "param": param},
                              error_messages={"invalid": wrong, "required": REQUIRED, "null": wrong}, **extra)


class ParamsSchema(Schema):
    """A request body built from Params: unknown fields are refused, every error is reported at once."""

    error_messages = {"unknown": UNKNOWN, "type": "request body must be a JSON object"}


def params_schema(name: str, params: tuple[Param, ...], **more: fields.Field) -> type[Schema]:
    """A schema class (named for the spec's components) with one field per Param, in the table's order."""
    return ParamsSchema.from_dict({p.name: param_field(p) for p in params} | more, name=name)


def _one(names: tuple[str, ...], table: tuple[Param, ...]) -> tuple[Param, ...]:
    by_name = {p.name: p for p in table}
    return tuple(by_name[n] for n in names)


FILES = fields.List(Upload(), metadata={"description": "images, or zip archives of them (unpacked unless "
                                                       "extract_zip is false)"})
FORM_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
"""How a multipart form (all strings) says a boolean."""
EXTRACT_ZIP = fields.String(load_default="true", validate=validate.OneOf(list(FORM_BOOLS)),
                            metadata={"description": "unpack parts named *.zip (true or false)"})

TrainRequest = params_schema("TrainRequest", TRAIN_PARAMS)
PredictRequest = params_schema("PredictRequest", PREDICT_PARAMS)
PredictForm = params_schema("PredictForm", PREDICT_PARAMS, file=FILES, extract_zip=EXTRACT_ZIP)
MAX_SYNC_FILES = 32  # the most images POST /models/<id>/predict classifies in one request
SYNC_PARAMS = _one(("top_k", "threshold", "target_precision", "reject_ood", "precision", "runtime", "tta"),
                   PREDICT_PARAMS)
PredictNowRequest = params_schema("PredictNowRequest", SYNC_PARAMS)
PredictNowForm = params_schema("PredictNowForm", SYNC_PARAMS, file=fields.List(
    Upload(), required=True, validate=validate.Length(1, MAX_SYNC_FILES), metadata={"description": "the images"}))
DatasetPathRequest = params_schema("DatasetPathRequest", DATASET_PATH_PARAMS)
DatasetUploadFields = params_schema("DatasetUploadFields", _one(("name",), DATASET_PATH_PARAMS))
DatasetUploadForm = params_schema("DatasetUploadForm", _one(("name",), DATASET_PATH_PARAMS), file=Upload(
    required=True, metadata={"description": "one zip or tar(.gz/.bz2/.xz) archive"}))
UploadForm = Schema.from_dict({"file": fields.List(Upload(), required=True, validate=validate.Length(min=1),
                                                  metadata=FILES.metadata),
                               "extract_zip": EXTRACT_ZIP}, name="UploadForm")


# ---- query strings ---------------------------------------------------------------------------------------------

class PageArgs(Schema):
    """?limit= and ?offset= of a list (newest first)."""

    limit = fields.Integer(load_default=20, validate=validate.Range(1, MAX_PAGE))
    offset = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))


class JobListArgs(PageArgs):
    """Filters of GET /jobs."""

    status = fields.String(validate=validate.OneOf(lifecycle.STATUSES))
    kind = fields.String(validate=validate.OneOf(lifecycle.KINDS))
    interactive = fields.Boolean(metadata={"description": "true: only the synchronous tries (POST /models/{id}/predict)"
                                                          "; false or absent: every job but those"})


class ModelListArgs(PageArgs):
    """Filters of GET /models."""

    job_id = fields.String(validate=NO_NUL, metadata={"description": "only the model trained by this job"})


class LogArgs(Schema):
    """?after= (a line id: the next lines) and ?limit= of a job's log."""

    after = fields.Integer(load_default=0, validate=validate.Range(0, MAX_OFFSET))  # ids are 32-bit integers
    limit = fields.Integer(load_default=1000, validate=validate.Range(1, 1000))


class ResultsArgs(Schema):
    """A page of results (keyset by path), or the whole CSV."""

    format = fields.String(load_default="json", validate=validate.OneOf(("json", "csv")))
    limit = fields.Integer(load_default=RESULTS_PAGE, validate=validate.Range(1, RESULTS_MAX_PAGE))
    after = fields.String(validate=NO_NUL, metadata={"description": "the last path of the previous page"})


class PredictionArgs(PageArgs):
    """Filters of a model's stored out-of-sample predictions."""

    true = fields.String(validate=NO_NUL, metadata={"description": "only images of this true class"})
    predicted = fields.String(validate=NO_NUL, metadata={"description": "only images predicted as this class"})
    errors_only = fields.Boolean(load_default=False, metadata={"description": "only misclassified images"})


class ResultImageArgs(Schema):
    """Which result row's thumbnail."""

    path = fields.String(required=True, validate=NO_NUL, metadata={"description": "the row's path"})


class DownloadArgs(Schema):
    """Which portable format to download."""

    format = fields.String(required=True, validate=validate.OneOf(EXPORT_FORMATS))


# ---- responses -------------------------------------------------------------------------------------------------

def _nullable(field: type[fields.Field], **kwargs: Any) -> fields.Field:  # noqa: ANN401
    return field(allow_none=True, **kwargs)


class FieldError(Schema):
    """One invalid field of a request."""

    field = fields.String(required=True)
    message = fields.String(required=True)


class Problem(Schema):
    """RFC 9457 problem details, plus Graft's own error (= detail), field and code that older clients read."""

    class Meta:
        unknown = INCLUDE  # an error may add facts: allowed, jobs, job_id, status_now, dataset_status, limit_mb...

    type = fields.String(required=True, metadata={"description": "about:blank: the status says it all"})
    title = fields.String(required=True)
    status = fields.Integer(required=True)
    detail = fields.String(required=True)
    error = fields.String(required=True, metadata={"description": "the same as detail (older clients read it)"})
    field = fields.String(metadata={"description": "the request field at fault (the first one)"})
    code = fields.String(metadata={"description": "a machine-readable reason, where there is one"})
    errors = fields.List(fields.Nested(FieldError), metadata={"description": "every invalid field"})


class CallbackAttempt(Schema):
    """One attempt to deliver a callback: its result's class only (no error text, address or timing)."""

    attempt = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    result = fields.String(required=True, validate=validate.OneOf(WEBHOOK_RESULTS))


class Callback(Schema):
    """A job's callback_url and its delivery."""

    url = fields.String(required=True)
    state = fields.String(required=True, validate=validate.OneOf(("waiting", "pending", "delivered", "failed")))
    delivered_at = _nullable(fields.DateTime)
    next_attempt_at = _nullable(fields.DateTime)
    attempts = fields.List(fields.Nested(CallbackAttempt))


class AccuracySchema(Schema):
    """A model's one accuracy: its out-of-sample estimate (graft.shared.accuracy)."""

    value = fields.Float(required=True)
    source = fields.String(required=True, validate=validate.OneOf(SOURCES))
    images = _nullable(fields.Integer, required=True)
    kept = fields.String(required=True)


class JobSchema(Schema):
    """A job of any kind."""

    id = fields.String(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(lifecycle.KINDS))
    status = fields.String(required=True, validate=validate.OneOf(lifecycle.STATUSES))
    params = fields.Dict(required=True)
    progress = fields.Dict(required=True)
    metrics = fields.Dict(required=True)
    accuracy = fields.Nested(AccuracySchema, allow_none=True, required=True)  # a succeeded training job's model's
    model_id = _nullable(fields.String, required=True)
    error = _nullable(fields.String, required=True)
    worker = _nullable(fields.String, required=True)
    attempts = fields.Integer(required=True)
    cancel_requested = fields.Boolean(required=True)
    lease_expires_at = _nullable(fields.DateTime, required=True)
    created_at = fields.DateTime(required=True)
    started_at = _nullable(fields.DateTime, required=True)
    finished_at = _nullable(fields.DateTime, required=True)
    callback = fields.Nested(Callback, allow_none=True, required=True)


class Event(Schema):
    """One recorded state change of a job."""

    from_ = _nullable(fields.String, data_key="from", required=True)
    to = fields.String(required=True)
    message = _nullable(fields.String, required=True)
    at = fields.DateTime(required=True)


class ModelSchema(Schema):
    """A trained model (no server path: a model leaves the server through /download)."""

    id = fields.String(required=True)
    name = fields.String(required=True, metadata={"description": "given at training (model_name), or the dataset's "
                                                                 "or folder's name and the backbone"})
    job_id = fields.String(required=True)
    dataset_id = _nullable(fields.String, required=True, metadata={"description": "the uploaded dataset it learnt "
                                                                                  "from (null: a server folder)"})
    backbone = fields.String(required=True)
    classes = fields.List(fields.String(), required=True)
    image_size = fields.Integer(required=True)
    metrics = fields.Dict(required=True)
    accuracy = fields.Nested(AccuracySchema, allow_none=True, required=True)
    created_at = fields.DateTime(required=True)


class DatasetSummary(Schema):
    """A dataset as the list shows it: issue counts, not the issues."""

    id = fields.String(required=True)
    name = fields.String(required=True)
    source = fields.String(required=True, validate=validate.OneOf((UPLOAD, SERVER_PATH)))
    status = fields.String(required=True, validate=validate.OneOf(DATASET_STATUSES))
    classes = _nullable(fields.Dict, required=True)
    num_images = _nullable(fields.Integer, required=True)
    has_errors = _nullable(fields.Boolean, required=True)
    error = _nullable(fields.String, required=True)
    issue_counts = fields.Dict(keys=fields.String(), values=fields.Integer())
    created_at = fields.DateTime(required=True)


class DatasetSchema(DatasetSummary):
    """A dataset with its full inspection report."""

    class Meta:
        exclude = ("issue_counts",)

    issues = fields.List(fields.Dict(), required=True)
    conversions = fields.Dict(required=True)
    layout = _nullable(fields.String, required=True)
    splits = _nullable(fields.Dict, required=True)
    num_files = _nullable(fields.Integer, required=True)
    path = fields.String(metadata={"description": "the folder a `path` dataset was made from (not for uploads)"})
    size_bytes = _nullable(fields.Integer, required=True)
    thumbnails = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), metadata={
        "description": "per class, names of a few thumbnails: GET /datasets/{id}/thumbnails/{name}"})


class ResultRow(Schema):
    """One classified file."""

    path = fields.String(required=True)
    label = _nullable(fields.String, required=True)
    confidence = _nullable(fields.Float, required=True)
    top_k = fields.List(fields.Dict(), required=True)
    error = _nullable(fields.String, required=True)
    ood_score = _nullable(fields.Float, required=True, metadata={
        "description": "distance of the image's features from the training images' (kNN cosine); null for "
                       "error rows and models trained before it existed"})
    reason = _nullable(fields.String, required=True, metadata={
        "description": "why the label is unknown: unlike the training images, or below a threshold"})


def page_of(item: type[Schema], name: str) -> type[Schema]:
    """{"items": [...], "next": url or null}."""
    return Schema.from_dict({"items": fields.List(fields.Nested(item), required=True),
                             "next": _nullable(fields.String, required=True)}, name=name)


class ValPrediction(Schema):
    """One validation image: what the model said of it, out of sample."""

    index = fields.Integer(required=True, metadata={"description": "its number in the validation split"})
    file = fields.String(required=True, metadata={"description": "relative to the dataset's folder"})
    true = fields.String(required=True)
    predicted = fields.String(required=True)
    confidence = fields.Float(required=True)
    correct = fields.Boolean(required=True)
    thumbnail = _nullable(fields.String, required=True, metadata={"description": "its thumbnail's URL"})


JobPage = page_of(JobSchema, "JobPage")
ModelPage = page_of(ModelSchema, "ModelPage")
DatasetPage = page_of(DatasetSummary, "DatasetPage")
EventList = Schema.from_dict({"items": fields.List(fields.Nested(Event), required=True)}, name="EventList")
ResultsPage = Schema.from_dict({"job_id": fields.String(required=True),
                                "items": fields.List(fields.Nested(ResultRow), required=True),
                                "summary": fields.Dict(required=True),
                                "next": _nullable(fields.String, required=True)}, name="ResultsPage")
PredictNowAnswer = Schema.from_dict({"model_id": fields.String(required=True), "job_id": fields.String(required=True),
                                     "items": fields.List(fields.Nested(ResultRow), required=True),
                                     "summary": fields.Dict(required=True)}, name="PredictNowAnswer")
ValPredictionPage = Schema.from_dict({
    "model_id": fields.String(required=True),
    "total": fields.Integer(required=True, metadata={"description": "images in the validation split"}),
    "stored": fields.Integer(required=True, metadata={"description": "kept (every misclassified one first)"}),
    "matching": fields.Integer(required=True, metadata={"description": "kept ones that pass the filters"}),
    "items": fields.List(fields.Nested(ValPrediction), required=True),
    "next": _nullable(fields.String, required=True)}, name="ValPredictionPage")
UploadAnswer = Schema.from_dict({"id": fields.String(required=True), "added": fields.Integer(required=True)},
                                name="UploadAnswer")
Deleted = Schema.from_dict({"id": fields.String(required=True), "deleted": fields.Boolean(required=True)},
                           name="Deleted")
Exporting = Schema.from_dict({"status": fields.String(required=True, validate=validate.OneOf(("queued", "building"))),
                              "model_id": fields.String(required=True),
                              "format": fields.String(required=True, validate=validate.OneOf(EXPORT_FORMATS)),
                              "url": fields.String(required=True, metadata={"description": "ask it again"}),
                              "retry_after_s": fields.Integer(required=True)}, name="Exporting")
Disk = Schema.from_dict({"artifacts_free_bytes": fields.Integer(required=True),
                         "uploads_refused": fields.Boolean(required=True)}, name="Disk")
Health = Schema.from_dict({"status": fields.String(required=True, validate=validate.OneOf(("ok", "degraded"))),
                           "database": fields.Boolean(required=True), "redis": fields.Boolean(required=True),
                           "disk": fields.Nested(Disk, required=True)}, name="Health")
LogLine = Schema.from_dict({"id": fields.Integer(required=True), "at": fields.DateTime(required=True),
                            "level": fields.String(required=True), "logger": fields.String(required=True),
                            "worker": _nullable(fields.String, required=True), "message": fields.String(required=True)},
                           name="LogLine")
LogPage = page_of(LogLine, "LogPage")

