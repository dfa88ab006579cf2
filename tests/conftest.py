"""Shared test set-up: offline paths, W&B offline, and a Hydra config composer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYSOUT_SHARED_DIR", ROOT.parent / "shared")).resolve()

os.environ.setdefault("SYSOUT_ROOT", str(ROOT))
os.environ.setdefault("SYSOUT_SHARED_DIR", str(SHARED))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ["WANDB_MODE"] = "offline"  # tests never reach the network
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without a GPU the Triton kernels run in the interpreter (must be set before triton is imported).
if not Path("/dev/nvidia0").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not (SHARED / "data").is_dir():
        pytest.fail(f"tests need the offline corpora in {SHARED}/data (set SYSOUT_SHARED_DIR)")
    return SHARED


@pytest.fixture(scope="session")
def token_cache_dir(tmp_path_factory) -> Path:
    """One token cache for the session: the corpora are tokenized once."""
    return tmp_path_factory.mktemp("token-cache")


@pytest.fixture()
def compose_train(tmp_path, shared_dir, token_cache_dir):
    """Compose conf/train.yaml with overrides into a config whose outputs go to tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    def _compose(*overrides: str, config_name: str = "train"):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                config_name=config_name, return_hydra_config=True, overrides=list(overrides)
            )
        HydraConfig().set_config(cfg)
        with open_dict(cfg):
            del cfg.hydra  # as in a real run, where the job config has no hydra node
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.cache_dir = str(token_cache_dir)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
