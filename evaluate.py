"""Evaluate checkpoints: WikiText-2 perplexity, val loss, compression robustness, outliers.

    python evaluate.py checkpoints=multirun/train/quickstart/2025-01-01_12-00-00
    python evaluate.py checkpoints=[a.ckpt,b.ckpt] methods=[w8a8,wanda_50,gamma_reset_one+w8a8]

See docs/evaluation.md.
"""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("SYSOUT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from sysout.evaluation.run import evaluate

    evaluate(cfg)


if __name__ == "__main__":
    main()
