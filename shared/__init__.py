"""Code used by both the API and the workers: config, database, job state machine, queue, storage."""
