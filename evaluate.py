"""Evaluate checkpoints: WikiText-2 perplexity, val loss, compression robustness, outliers.

    python evaluate.py checkpoints=multirun/train/quickstart/2025-01-01_12-00-00
    python evaluate.py checkpoints=[a.ckpt,b.ckpt] methods=[w8a8,wanda_50,gamma_reset_one+w8a8]

On sysout's own errors (a wrong config value, a missing checkpoint or text, an unreachable
``hf:`` model: a ``ValueError`` or ``FileNotFoundError`` that sysout raises, ``CheckpointError``,
``HFLoadError`` and ``DataSourceError`` among them; and ``EvaluationError``, every checkpoint
failed) it prints the error's name and its message, which says what to do, and exits with
status 1; the traceback is in the run's ``evaluate.log``, and ``HYDRA_FULL_ERROR=1`` prints it.
Any other error keeps its traceback. See docs/evaluation.md and :mod:`sysout.loggers.console`.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("SYSOUT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from sysout.evaluation.run import EvaluationError, evaluate
    from sysout.loggers.console import errors_for_people

    with errors_for_people("evaluate.py", run_errors=(EvaluationError,)):
        evaluate(cfg)


if __name__ == "__main__":
    main()
