"""Published coordinates on real weights (docs/pretrained.md); skipped unless present locally.

Set SYSOUT_PRETRAINED_LLAMA2_7B / SYSOUT_PRETRAINED_GPT2 to save_pretrained folders.
"""

from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.weights


def _folder(var: str) -> str:
    path = os.environ.get(var)
    if not path or not os.path.isfile(os.path.join(path, "config.json")):
        pytest.skip(f"{var} does not point at a local model folder")
    return path


def test_llama2_7b_massive_activations_sit_in_dims_1415_and_2533():
    from sysout.adapters.hf_load import load_hf_model
    from sysout.outliers.lifecycle import lifecycles

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "fp16" if device == "cuda" else "fp32"
    model = load_hf_model("hf:" + _folder("SYSOUT_PRETRAINED_LLAMA2_7B"), dtype, device)
    ids = torch.tensor(model.sysout_tokenizer("Summer is warm. Winter is cold.")["input_ids"])
    found = lifecycles(model, ids.to(device), limit=4)
    assert {lc.dim for lc in found} >= {1415, 2533}
    assert min(lc.created for lc in found if lc.dim in (1415, 2533)) == 1
    assert any(lc.token == 0 for lc in found)


def test_gpt2_massive_activations_start_early_at_the_first_token():
    from sysout.adapters.hf_load import load_hf_model
    from sysout.outliers.lifecycle import lifecycles

    model = load_hf_model("hf:" + _folder("SYSOUT_PRETRAINED_GPT2"), "fp32", "cpu")
    ids = torch.tensor(model.sysout_tokenizer("Summer is warm. Winter is cold.")["input_ids"])
    found = lifecycles(model, ids, limit=4)
    assert found and found[0].token == 0 and found[0].created <= 3
