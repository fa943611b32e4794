"""GET /metrics: Prometheus metrics, read from the database and Redis at scrape time (a prometheus_client collector).

Why at scrape time and not counters in memory: the API runs in several stateless processes and jobs run on other
machines, so the only place that knows every job is the database. Each scrape is a handful of aggregate queries.
"""
from __future__ import annotations

import logging
import time
from typing import Iterator

from flask import Response
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from graft.api.context import config as app_config
from graft.api.openapi import Blueprint
from graft.shared.config import Config
from graft.shared.db import session_scope
from graft.shared.lifecycle import FINISHED, KINDS, QUEUED, RUNNING, STATUSES
from graft.shared.models import Job, utcnow
from graft.shared.queue import QUEUE_KINDS, queue_name
from graft.shared.retention import disk_free_bytes
from graft.shared.serializers import as_utc

log = logging.getLogger(__name__)

# Job durations span a 2-second synchronous predict to an hour of fine-tuning.
DURATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200)


class GraftCollector(Collector):
    """Jobs by kind and status, queue depths, the oldest queued job, durations, live workers, free disk."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def collect(self) -> Iterator[object]:
        """One scrape's metric families."""
        with session_scope(self.config.database_url) as session:
            counts = dict(((k, s), n) for k, s, n in session.execute(
                select(Job.kind, Job.status, func.count()).group_by(Job.kind, Job.status)))
            oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == QUEUED))
            now = utcnow()
            workers = session.scalar(select(func.count(func.distinct(Job.worker))).where(
                Job.status == RUNNING, Job.lease_expires_at > now))
            finished = session.execute(select(Job.kind, Job.started_at, Job.finished_at).where(
                Job.status.in_(FINISHED), Job.started_at.is_not(None), Job.finished_at.is_not(None))).all()

        jobs = GaugeMetricFamily("graft_jobs", "Jobs by kind and status.", labels=["kind", "status"])
        for kind in KINDS:
            for status in STATUSES:
                jobs.add_metric([kind, status], counts.get((kind, status), 0))
        yield jobs

        age = GaugeMetricFamily("graft_oldest_queued_job_age_seconds", "Age of the oldest queued job (0: none).")
        age.add_metric([], max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest else 0.0)
        yield age

        yield from self._durations(finished)

        live = GaugeMetricFamily("graft_workers_running_jobs",
                                 "Worker processes holding a live job lease (idle workers are not counted).")
        live.add_metric([], workers or 0)
        yield live

        depth = GaugeMetricFamily("graft_queue_depth", "Messages waiting in each Redis queue (-1: Redis down).",
                                  labels=["queue"])
        for kind, length in self._queue_depths().items():
            depth.add_metric([kind], length)
        yield depth

        disk = GaugeMetricFamily("graft_artifacts_free_bytes", "Free bytes on the artifacts folder's disk.")
        disk.add_metric([], disk_free_bytes(self.config.artifacts_dir))
        yield disk

    def _durations(self, finished: list) -> Iterator[HistogramMetricFamily]:
        hist = HistogramMetricFamily("graft_job_duration_seconds", "Run time of finished jobs (last attempt).",
                                     labels=["kind"])
        for kind in KINDS:
            seconds = [(as_utc(end) - as_utc(start)).total_seconds() for k, start, end in finished if k == kind]
            buckets = [(str(b), sum(1 for s in seconds if s <= b)) for b in DURATION_BUCKETS]
            hist.add_metric([kind], buckets + [("+Inf", len(seconds))], sum_value=sum(seconds))
        yield hist

    def _queue_depths(self) -> dict[str, int]:
        import redis

        try:
            client = redis.Redis.from_url(self.config.redis_url, socket_connect_timeout=1, socket_timeout=1)
            try:
                return {kind: int(client.llen(queue_name(self.config, kind))) for kind in QUEUE_KINDS}
            finally:
                client.close()
        except redis.RedisError:
            log.warning("metrics: Redis unreachable, queue depths reported as -1")
            return {kind: -1 for kind in QUEUE_KINDS}


def render(config: Config) -> tuple[bytes, str]:
    """The exposition text of one scrape and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    started = time.monotonic()
    registry.register(GraftCollector(config))
    body = generate_latest(registry)
    log.debug("metrics scrape took %.3f s", time.monotonic() - started)
    return body, CONTENT_TYPE_LATEST


bp = Blueprint("metrics", __name__, description="Prometheus metrics (an admin token is needed: they count every "
                                                "user's jobs).")


@bp.get("/metrics")
@bp.response(200, {"type": "string", "description": "Prometheus text exposition format"}, content_type="text/plain")
@bp.problems(401, 403)
def metrics() -> Response:
    """The Prometheus exposition (an admin's bearer token is needed: scrapers can send one)."""
    body, content_type = render(app_config())
    return Response(body, content_type=content_type)
