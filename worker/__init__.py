"""graft.worker: the Celery app, thin tasks, the runners that record state, and the pure core (graft.worker.core)."""
