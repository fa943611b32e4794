"""The worker's Celery app. The main process never touches torch: each pool child sets its own threads."""
from __future__ import annotations

import logging
import os

from celery.signals import worker_process_init

from shared.config import get_config
from shared.queue import make_celery

log = logging.getLogger(__name__)

app = make_celery(get_config())
app.conf.include = ["worker.tasks"]

# Set by `graft worker` before the pool forks; children inherit it. 0 means "cores / concurrency".
TORCH_THREADS = {"n": 0}


@worker_process_init.connect
def _init_child(**_kwargs: object) -> None:
    # torch is imported and configured only here, in the forked child: a parent that ran a torch op
    # would leave its children hanging in their first parallel op.
    import torch

    n = TORCH_THREADS["n"] or max(1, (os.cpu_count() or 1) // max(1, app.conf.worker_concurrency or 1))
    torch.set_num_threads(n)
    log.info("worker child %d: torch threads = %d", os.getpid(), n)
