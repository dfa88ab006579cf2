"""The CPU laboratory: the Bigram-Backcopy task (docs/lab.md), its sweep and its report.

Only the task is imported here; ``python -m sysout.lab.sweep`` and ``python -m sysout.lab.report``
are the runner and the report writer.
"""

from sysout.lab.task import BOS_STRING, BigramBackcopy, TaskError, sequence_uniforms

__all__ = ["BOS_STRING", "BigramBackcopy", "TaskError", "sequence_uniforms"]
