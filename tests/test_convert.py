"""HF GPT-2 <-> sysout conversion, the activation option, official checkpoints, the export."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as T

from sysout.evaluation import load_checkpoint
from sysout.evaluation.export import main as export_main
from sysout.model import build_gpt
from sysout.model.convert import (
    ConversionError,
    gpt2_tokenizer,
    hf_gpt2_from_sysout,
    sysout_from_hf_gpt2,
)
from sysout.training.module import GPTLitModule

TINY = dict(n_layer=3, n_head=2, n_embd=16, block_size=32, vocab_size=50304)


def _ids(n: int = 24, vocab: int = 50257) -> torch.Tensor:
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(3))


def _hf_gpt2(act: str = "gelu_new") -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.GPT2Config(
        n_layer=3, n_head=2, n_embd=16, n_positions=32, vocab_size=50257, activation_function=act
    )
    model = T.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-zero biases and LayerNorm affine, so every tensor is checked
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(0.05 * torch.randn_like(p))
            if "mlp.c_fc.weight" in name:  # pre-activations of order 1, where the GELUs differ
                p.mul_(50.0)
    return model


@pytest.mark.parametrize(("act", "ours"), [("gelu_new", "gelu_tanh"), ("gelu", "gelu")])
def test_hf_gpt2_weights_run_in_sysout_with_their_own_activation(act, ours):
    hf = _hf_gpt2(act)
    model = sysout_from_hf_gpt2(hf)
    assert model.config.activation == ours and model.config.attention == "softmax"
    idx = _ids()
    with torch.no_grad():
        ref, got = hf(idx).logits, model(idx)[0]
        assert torch.allclose(got, ref, atol=1e-5, rtol=0)
        if act == "gelu_new":  # the exact GELU would not reproduce OpenAI-style weights
            exact = build_gpt({**model.config.to_dict(), "activation": "gelu"}, None)
            exact.load_state_dict(model.state_dict())
            assert (exact.eval()(idx)[0] - ref).abs().max() > 1e-5


def test_a_sysout_model_exports_to_transformers_with_the_same_logits(tmp_path):
    torch.manual_seed(1)
    model = build_gpt({**TINY, "activation": "gelu_tanh"}, {"name": "softmax"}).eval()
    hf = hf_gpt2_from_sysout(model)
    assert hf.config.activation_function == "gelu_new"
    hf.save_pretrained(tmp_path / "out")
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    idx = _ids(vocab=50304)
    with torch.no_grad():
        assert torch.allclose(again(idx).logits, model(idx)[0], atol=1e-5, rtol=0)
    with pytest.raises(ConversionError, match="'kv_bias' has no Hugging Face GPT-2 equivalent"):
        hf_gpt2_from_sysout(build_gpt(TINY, {"name": "kv_bias"}))
    with pytest.raises(ConversionError, match="no learned sink tokens"):
        hf_gpt2_from_sysout(build_gpt({**TINY, "sink_tokens": 1}, {"name": "softmax"}))


def test_guo_parametrised_model_round_trips_through_transformers(tmp_path):
    """ReLU MLP, untied head, LayerNorm biases without Linear biases: exported and re-imported
    with the same logits (HF GPT-2 has relu and tie_word_embeddings=False)."""
    torch.manual_seed(4)
    guo = {**TINY, "activation": "relu", "tie_embeddings": False, "norm_bias": True}
    model = build_gpt({**guo, "init": "torch_default"}, {"name": "softmax"}).eval()
    hf = hf_gpt2_from_sysout(model)
    assert hf.config.activation_function == "relu" and not hf.config.tie_word_embeddings
    hf.save_pretrained(tmp_path / "out")
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    back = sysout_from_hf_gpt2(again)
    assert back.config.activation == "relu" and not back.config.tie_embeddings
    idx = _ids(vocab=50304)
    with torch.no_grad():
        assert torch.allclose(again(idx).logits, model(idx)[0], atol=1e-4, rtol=0)
        assert torch.allclose(back(idx)[0], model(idx)[0], atol=1e-4, rtol=0)


def test_export_command_writes_a_folder_transformers_loads(tmp_path):
    module = GPTLitModule(dict(TINY), {"name": "softmax"})
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"model": dict(TINY), "attention": {"name": "softmax"}},
            "global_step": 5,
        },
        ckpt,
    )
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["model_type"] == "gpt2"
    meta = json.loads((tmp_path / "hf" / "sysout_export.json").read_text())
    assert meta["step"] == 5 and meta["activation"] == "gelu"
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tok = T.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok("hello world")["input_ids"] == [31373, 995]  # tiktoken's r50k_base ids
    idx = _ids(vocab=50304)
    with torch.no_grad():
        ref = load_checkpoint(ckpt).model(idx)[0]
        assert torch.allclose(hf(idx).logits, ref, atol=1e-5, rtol=0)
    # A non-softmax checkpoint: a one-line reason and a failing exit status.
    module = GPTLitModule(dict(TINY), {"name": "sigmoid"})
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": {"model": dict(TINY), "attention": {"name": "sigmoid"}},
        },
        tmp_path / "sig.ckpt",
    )
    assert export_main([str(tmp_path / "sig.ckpt"), str(tmp_path / "hf2")]) == 1


def test_gpt2_tokenizer_matches_tiktoken():
    from sysout.data import get_tokenizer

    text = "Summer is warm. Winter is cold.\n\n = Robert Boulter = \n 1,024 tokens'll do"
    assert gpt2_tokenizer()(text)["input_ids"] == get_tokenizer().encode_ordinary(text)


def _official(model, variant: str) -> dict[str, torch.Tensor]:
    """The state dict the official repository's model file would save for this model."""
    out = {}
    h, d = model.config.n_head, model.config.n_embd // model.config.n_head
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".attn.variant.")
        if leaf in ("key_bias", "value_bias"):
            name = "k_bias" if leaf == "key_bias" else "v_bias"
            shaped = value.reshape(-1) if variant == "value_bias" else value.reshape(1, h, 1, d)
            out[f"_orig_mod.{prefix}.attn.{name}"] = shaped
        elif leaf.startswith("scale_proj."):
            out[f"{prefix}.attn.context_scale.0.{leaf.rpartition('.')[2]}"] = value
        else:
            out[f"_orig_mod.{key}"] = value
    return out


@pytest.mark.parametrize(
    ("model_type", "variant"),
    [
        ("gpt2_attn_bias", "kv_bias"),
        ("gpt2_cabias", "context_bias"),
        ("gpt2_vbias", "value_bias"),
        ("gpt2_ca_softmax", "ca_scaling"),
        ("gpt2_default", "softmax"),
    ],
)
def test_official_checkpoints_load_into_the_matching_variant(tmp_path, model_type, variant):
    torch.manual_seed(2)
    model = build_gpt(TINY, {"name": variant}).eval()
    args = {k: TINY[k] for k in TINY} | {"bias": False, "dropout": 0.0}
    path = tmp_path / "ckpt.pt"
    state = _official(model, variant)
    torch.save(
        {"model": state, "model_args": args, "iter_num": 9, "config": {"model_type": model_type}},
        path,
    )
    loaded = load_checkpoint(path)
    assert loaded.variant == variant and loaded.step == 9
    idx = _ids(vocab=50304)
    with torch.no_grad():
        assert torch.allclose(loaded.model(idx)[0], model(idx)[0], atol=1e-6, rtol=0)
    if variant in ("kv_bias", "context_bias"):  # without model_type the keys are ambiguous
        torch.save({"model": state, "model_args": args}, path)
        with pytest.raises(Exception, match="gpt2_attn_bias .* gpt2_cabias"):
            load_checkpoint(path)


def test_a_sysout_model_and_its_export_give_the_same_probe_report():
    from sysout.outliers.probe import run_probe

    torch.manual_seed(4)
    model = build_gpt(TINY, {"name": "softmax"}).eval()
    with torch.no_grad():  # a planted massive activation: token 0, dim 5, from block 1's MLP
        model.transformer.wpe.weight[0, 3] = 3.0
        model.transformer.h[1].mlp.c_fc.weight[7, 3] = 3.0
        model.transformer.h[1].mlp.c_proj.weight[5, 7] = 400.0
    hf = hf_gpt2_from_sysout(model)
    idx = _ids(n=16, vocab=50304)
    ours, theirs = run_probe(model, idx, None), run_probe(hf, idx, None)
    for a, b in zip(ours.layers, theirs.layers, strict=True):
        assert a.activation.dims == b.activation.dims
        assert a.activation.top1 == pytest.approx(b.activation.top1, rel=1e-5)
        assert a.c_proj.outlier_cols == b.c_proj.outlier_cols
    assert [(r.layer, r.position, r.dim) for r in ours.outliers] == [
        (r.layer, r.position, r.dim) for r in theirs.outliers
    ]
    assert 5 in ours.layers[1].activation.dims
