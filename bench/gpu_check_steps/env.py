"""Step 1: the machine. Device, driver, CUDA, torch, Triton, Python, which optional packages
import (the lent GPU image has no Hydra/OmegaConf/W&B/datasets), the registry's variants."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from typing import Any

from .common import PASSED, ROOT, StepContext, StepReport, fused_variants, slug

# Packages the steps may need beyond torch: which step needs which (docs/gpu-check.md).
OPTIONAL = {
    "triton": "correctness, speed, throughput (fused kernels)",
    "lightning": "throughput (its Throughput meter), science",
    "yaml": "throughput (reads conf/ without OmegaConf)",
    "hydra": "science (python train.py)",
    "omegaconf": "science (python train.py)",
    "tiktoken": "not needed by gpu-check",
    "wandb": "not needed by gpu-check (logger=csv)",
    "datasets": "not needed by gpu-check (Bigram-Backcopy is synthetic)",
    "transformers": "not needed by gpu-check",
}


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


DISTRIBUTIONS = {"yaml": "PyYAML", "hydra": "hydra-core"}


def _version(module: str) -> str | None:
    """The installed version, read from package metadata: importing transformers or wandb
    only to print a version would cost seconds."""
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(module, module))
    except importlib.metadata.PackageNotFoundError:
        return "present"


def describe() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        "git_commit": _run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        "packages": {name: _version(name) for name in OPTIONAL},
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            device_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        smi = _run(
            ["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"]
        )
        info["driver"] = smi.split(",")[0].strip() if smi else None
        info["nvidia_smi"] = smi
    else:
        info.update(device="cpu", driver=None, processor=platform.processor() or "unknown")
    info["device_slug"] = slug(info["device"]) if info["cuda_available"] else "cpu-dryrun"
    fused, plain = fused_variants()
    info["variants_fused"], info["variants_reference_only"] = fused, plain
    return info


def run(ctx: StepContext) -> int:
    report = StepReport(ctx)
    info = describe()
    dry = ctx.dry_run or not info["cuda_available"]
    mode = "CPU DRY RUN (tiny shapes, kernels in the Triton interpreter)" if dry else "GPU"
    print(f"gpu-check: {mode}", flush=True)
    print(
        f"device {info['device']}, driver {info.get('driver')}, CUDA {info['torch_cuda']}, "
        f"torch {info['torch']}, triton {info['packages']['triton']}, Python {info['python']}",
        flush=True,
    )
    missing = [m for m, v in info["packages"].items() if v is None]
    if missing:
        report.note("not importable here: " + ", ".join(f"{m} ({OPTIONAL[m]})" for m in missing))
    report.note(f"fused variants: {', '.join(info['variants_fused'])}")
    if info["variants_reference_only"]:
        report.note(f"reference-only variants: {', '.join(info['variants_reference_only'])}")
    report.finish(PASSED, info=info, mode=mode, argv=sys.argv[1:])
    return 0
