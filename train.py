"""Train a GPT-2 attention variant: ``python train.py experiment=quickstart attention=kv_bias``."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("SYSOUT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sysout.training.run import train

    metrics = train(cfg)
    # The returned value lets Hydra sweepers optimise the validation loss.
    return metrics.get("val/loss")


if __name__ == "__main__":
    main()
