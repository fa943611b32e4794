"""The one way the core stops early: a run's should_stop callback said yes between two steps."""
from __future__ import annotations


class Stopped(Exception):
    """should_stop() asked the run to stop (the job was cancelled, or taken over by another worker); what it already
    wrote is kept: a training job's last checkpoint, a prediction chunk's earlier rows."""
