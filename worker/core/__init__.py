"""graft.worker.core: the pure training, prediction and inspection core (no Flask, Celery or SQLAlchemy)."""
