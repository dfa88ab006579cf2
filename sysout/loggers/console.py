"""What ``train.py`` and ``evaluate.py`` print when they stop on a wrong input, and the lines of
other libraries they leave out.

**sysout's own errors** are the ones whose message is the whole story for the person who ran
the script:

- a ``ValueError`` or ``FileNotFoundError`` raised by sysout's own code: sysout's convention for
  a wrong input (a config value, a file or folder, a checkpoint, a model name). Its named errors
  are ValueErrors: ``CheckpointError``, ``HFLoadError``, ``DataSourceError``, ``TaskError``,
  ``ConversionError``, and the checks of every config (``EvalSettings``, ``GPTConfig``, ...);
- the run-level errors the entry point names (``NonFiniteLossError``, ``EvaluationError``).

Hydra's ``InstantiationException`` wraps an error raised by a configured object's constructor
(``raise ... from``): the cause is looked at too, and its config key kept. The same classes
raised inside torch, numpy, transformers or Lightning are not sysout's, and an unknown error
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.errors import CompactHydraException

log = logging.getLogger(__name__)

SYSOUT_DIR = Path(__file__).resolve().parents[1]
#: The errors sysout raises for a wrong input, when sysout's code raises them.
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError)
FULL_ERROR_ENV = "HYDRA_FULL_ERROR"  # Hydra's switch, kept: one switch for both kinds of error

# Console lines of other libraries that a user cannot act on: (logger, text of the line).
NOISY_LINES = (
    # Lightning's advert for its cloud logger, at every Trainer construction.
    ("lightning.pytorch.utilities.rank_zero", "litlogger"),
    ("lightning.fabric.utilities.rank_zero", "litlogger"),
)
# Warnings of other libraries about each other, not about sysout or its user.
NOISY_WARNINGS = (
    # torch deprecating a class that Lightning's _pytree still uses, at every fit.
    (FutureWarning, r"`isinstance\(treespec, LeafSpec\)` is deprecated"),
)


class ReportedError(CompactHydraException):
    """A sysout error already explained: Hydra prints its message without a traceback (in a
    sweep, where the other jobs must still run, so the entry point cannot simply exit)."""


class _DropLines(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_third_party() -> None:
    """Keep :data:`NOISY_LINES` and :data:`NOISY_WARNINGS` off the console (idempotent)."""
    for name, text in NOISY_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) and f.text == text for f in logger.filters):
            logger.addFilter(_DropLines(text))
    for category, message in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def own_error(
    err: BaseException, run_errors: tuple[type[BaseException], ...] = ()
) -> BaseException | None:
    """The first of ``err`` and its explicit causes that is sysout's own (module docstring)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, run_errors):
            return current
        if isinstance(current, INPUT_ERRORS) and raised_by_sysout(current):
            return current
        current = current.__cause__
    return None


def raised_by_sysout(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback is in the sysout package."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and Path(frames[-1].filename).resolve().is_relative_to(SYSOUT_DIR)


def describe(found: BaseException, raised: BaseException) -> str:
    """The message of ``found``, after the config key of a Hydra instantiation around it."""
    message = str(found) or type(found).__name__
    key = re.search(r"full_key: (\S+)", str(raised)) if raised is not found else None
    return f"{key.group(1)}: {message}" if key else message


@contextmanager
def errors_for_people(
    script: str, run_errors: tuple[type[BaseException], ...] = ()
) -> Iterator[None]:
    """Run an entry point's body; on sysout's own error print two lines, the error's name with
    where its traceback is, then its message (which ends with what to do), and exit with
    status 1. ``HYDRA_FULL_ERROR=1`` lets it propagate to Hydra's full traceback instead; any
    other error propagates as it is."""
    try:
        yield
    except Exception as raised:
        found = own_error(raised, run_errors)
        if found is None or os.environ.get(FULL_ERROR_ENV) == "1":
            raise
        message = describe(found, raised)
        logs = _write_traceback_to_log_files(raised)
        where = f"{FULL_ERROR_ENV}=1 prints the traceback" + (
            f"; it is in {logs[0]}" if logs else ""
        )
        if _in_multirun():  # the other jobs run on; Hydra names the failure at the end
            log.error("%s: %s", type(found).__name__, message)
            raise ReportedError(f"{script}: {type(found).__name__}: {message}") from raised
        print(f"{script} stopped: {type(found).__name__} ({where})", file=sys.stderr)
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def _write_traceback_to_log_files(err: BaseException) -> list[str]:
    """The whole traceback into the run's log files (Hydra's ``<task>.log``), not the console."""
    record = logging.LogRecord(
        __name__, logging.ERROR, __file__, 0, "stopped by this error:", None,
        (type(err), err, err.__traceback__),
    )  # fmt: skip
    files = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and handler.baseFilename != os.devnull:
            handler.handle(record)
            files.append(handler.baseFilename)
    return files


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
