"""Lightning callbacks of sysout: they wire pure statistics and meters to the loggers."""

from sysout.callbacks.outliers import OutlierCallback, wandb_key
from sysout.callbacks.preemption import PreemptionCheckpoint
from sysout.callbacks.throughput import ThroughputCallback

__all__ = [
    "OutlierCallback",
    "PreemptionCheckpoint",
    "ThroughputCallback",
    "wandb_key",
]
