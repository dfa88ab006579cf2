"""Train a GPT-2 attention variant: ``python train.py experiment=quickstart attention=kv_bias``.

On sysout's own errors (a wrong config value, data path or checkpoint: a ``ValueError`` or
``FileNotFoundError`` that sysout raises, ``DataSourceError``, ``TaskError`` and
``CheckpointError`` among them; and ``NonFiniteLossError``) it prints the error's name and its
message, which says what to do, and exits with status 1; the traceback is in the run's
``train.log``, and ``HYDRA_FULL_ERROR=1`` prints it. Any other error keeps its traceback.
See :mod:`sysout.loggers.console`.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("SYSOUT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sysout.loggers.console import errors_for_people
    from sysout.training.module import NonFiniteLossError
    from sysout.training.run import train

    with errors_for_people("train.py", run_errors=(NonFiniteLossError,)):
        metrics = train(cfg)
    # The returned value lets Hydra sweepers optimise the validation loss.
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
