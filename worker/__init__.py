"""Celery workers: the app, thin tasks, and the pure training core (worker.core)."""
