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


def _sentence_ids(model) -> torch.Tensor:
    """The probe sentence as the anchors feed it: no special tokens (no ``<s>``)."""
    from sysout.adapters import encode_text

    return torch.tensor(encode_text(model.sysout_tokenizer, "Summer is warm. Winter is cold."))


def test_llama2_7b_massive_activations_sit_in_dims_1415_and_2533():
    """Dims 1415 / 2533 from block 1 at token 0, written by down_proj column 7890 of block 1;
    at block 30 the down-projection input's largest channels are 3721 and 7006 and its output
    has the opposite sign (official lib/model_dict.py; the values of token 0 in Sun et al.'s
    lib/hook.py are 767.6 and -458.55)."""
    from sysout.adapters.hf_load import load_hf_model
    from sysout.outliers.lifecycle import capture, lifecycles

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "fp16" if device == "cuda" else "fp32"
    model = load_hf_model("hf:" + _folder("SYSOUT_PRETRAINED_LLAMA2_7B"), dtype, device)
    ids = _sentence_ids(model).to(device)
    found = lifecycles(model, ids, limit=4)
    assert {lc.dim for lc in found} >= {1415, 2533}
    assert min(lc.created for lc in found if lc.dim in (1415, 2533)) == 1
    first = [lc for lc in found if lc.token == 0 and lc.dim in (1415, 2533)]
    assert {lc.dim for lc in first} == {1415, 2533}
    assert all(lc.column == 7890 for lc in first)  # the down_proj column that writes them
    cap = capture(model, ids)
    assert int(cap.stages[1]["down_in"][0].abs().argmax()) == 7890
    top = cap.stages[30]["down_in"][0].abs().topk(2).indices.tolist()
    assert set(top) == {3721, 7006}
    for dim in (1415, 2533):  # block 30's MLP writes against what the stream carries
        carried = float(cap.stages[29]["residual"][0, dim])
        assert float(cap.stages[30]["down_out"][0, dim]) * carried < 0


def test_gpt2_massive_activations_start_early_at_the_first_token():
    from sysout.adapters.hf_load import load_hf_model
    from sysout.outliers.lifecycle import lifecycles

    model = load_hf_model("hf:" + _folder("SYSOUT_PRETRAINED_GPT2"), "fp32", "cpu")
    ids = _sentence_ids(model)
    found = lifecycles(model, ids, limit=4)
    assert found and found[0].token == 0 and found[0].created <= 3
