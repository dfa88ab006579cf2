"""sysout works where triton is not installed (macOS, Windows): only running a kernel needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter with triton hidden exactly as if it were not installed:
# `import triton` raises ImportError and importlib.util.find_spec("triton") returns None.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["triton"] = None
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from sysout.attention import build_variant
    from sysout.training.run import train

    conf_dir, out_dir, cache_dir = sys.argv[1:4]
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        cfg = compose(
            config_name="train",
            return_hydra_config=True,
            overrides=[
                "experiment=quickstart", "model=gpt2_tiny", "attention=kv_bias", "logger=none",
                "callbacks=none", "test=false", "trainer.max_steps=2",
                "trainer.val_check_interval=2", "trainer.enable_progress_bar=false",
                "data.batch_size=2", "data.val_windows=2",
            ],
        )
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
        cfg.paths.output_dir = out_dir
        cfg.paths.cache_dir = cache_dir
    metrics = train(cfg)
    GlobalHydra.instance().clear()

    q = torch.randn(1, 2, 5, 16)
    x = torch.randn(1, 5, 32)
    auto = build_variant("softmax", 2, 32, impl="auto")
    ref = build_variant("softmax", 2, 32, impl="reference")
    same = torch.equal(auto(q, q, q, x), ref(q, q, q, x))
    try:
        build_variant("softmax", 2, 32, impl="triton")(q, q, q, x)
        error = None
    except RuntimeError as err:
        error = str(err)
    print(json.dumps({
        "val_loss": float(metrics["val/loss"]),
        "auto_is_reference": auto.resolved_impl(q) == "reference" and same,
        "triton_error": error,
        "triton_imported": sys.modules.get("triton") is not None,
    }))
    """
)


def test_trains_and_dispatches_without_triton(tmp_path, shared_dir) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(ROOT / "conf"), str(tmp_path), str(tmp_path / "cache")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < result["val_loss"] < 12
    assert result["auto_is_reference"]
    assert not result["triton_imported"]
    assert result["triton_error"] is not None and "triton" in result["triton_error"]
    assert "not installed" in result["triton_error"]
