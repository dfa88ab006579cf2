"""The anchors' protocols, exactly (issue 20): no BOS on pretrained models by default, Sun et
al.'s WikiText stream and windows, and the preset that sets them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_tiny import TOKENIZER_WORDS, tiny_model, tiny_tokenizer
from test_evaluate import _save_ckpt, _tiny_model

from sysout.adapters import adapter_for
from sysout.data import TextSource, get_tokenizer
from sysout.evaluation.perplexity import independent_plan, perplexity
from sysout.evaluation.protocol import EvalProtocol
from sysout.evaluation.run import evaluate
from sysout.evaluation.texts import Texts, source_rows, stream_text
from sysout.outliers import PROBE_SENTENCE

SENTENCE = PROBE_SENTENCE  # what the outlier report encodes
BOS = TOKENIZER_WORDS.index("<s>")
SUMMER = TOKENIZER_WORDS.index("Summer")

# WikiText's hub layout: each row keeps its newline, and empty rows sit between sections.
ROWS = [
    "",
    " = Robert Boulter = \n",
    "",
    " Robert Boulter is an English film , television and theatre actor . \n",
    " He had a guest @-@ starring role on the television series The Bill in 2000 . \n",
    "",
    " = = Career = = \n",
    "",
    "",
    " In 2006 , Boulter starred alongside Whishaw in the play Citizenship . \n",
]


@pytest.fixture()
def compose_eval(compose_train):
    def _compose(*overrides: str):
        return compose_train(
            "logger=none", "outlier_report=false", "progress=false", "max_eval_tokens=120",
            *overrides, config_name="evaluate",
        )  # fmt: skip

    return _compose


# ----------------------------------------------------------------------------- BOS
def test_hf_probe_and_texts_tokenize_without_special_tokens_by_default(tmp_path):
    model = tiny_model("llama")
    model.sysout_tokenizer = tok = tiny_tokenizer()
    assert tok(SENTENCE)["input_ids"][0] == BOS  # the tokenizer's own default adds <s>
    ad = adapter_for(model)
    ids = ad.encode(SENTENCE)
    assert ids[0] == SUMMER and BOS not in ids
    assert ad.encode(SENTENCE, add_special_tokens=True) == [BOS, *ids]
    (tmp_path / "s.txt").write_text(SENTENCE + "\n")
    src = {"kind": "local", "path": str(tmp_path / "s.txt"), "join": "concat"}
    texts = Texts(str(tmp_path / "cache"), None)
    assert texts.load(src, "eval", "e", "concat", tok).tolist() == ids
    assert texts.load(src, "eval", "e", "concat", tok, add_special_tokens=True)[0] == BOS


def test_evaluate_probes_an_hf_llama_from_its_first_text_token(compose_eval, tmp_path, monkeypatch):
    folder = tmp_path / "tiny_llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    seen: dict[str, list] = {}

    def fake_report(model, out_dir, batch, sentence, **kw):
        seen.setdefault("sentence", []).append(list(sentence))
        seen.setdefault("first", []).append(kw["decode"](sentence[0]))
        return {}, {}

    monkeypatch.setattr("sysout.evaluation.per_checkpoint.outlier_report", fake_report)
    for special in ("false", "true"):
        cfg = compose_eval(
            f"checkpoints=[hf:{folder}]",
            "outlier_report=true",
            "methods=[]",
            f"hf.add_special_tokens={special}",
        )
        (result,) = evaluate(cfg)
        assert result.error is None, result.error
        assert result.info["add_special_tokens"] is (special == "true")
    default, with_bos = seen["sentence"]
    assert default[0] == SUMMER and BOS not in default and seen["first"][0] == "Summer"
    assert with_bos == [BOS, *default]


# ----------------------------------------------------------------------------- Sun's stream
def _hub_source(monkeypatch, rows: list[str]) -> TextSource:
    import datasets

    monkeypatch.setattr(
        TextSource,
        "load_documents",
        lambda self, where="data": datasets.Dataset.from_dict({"text": rows}),
    )
    return TextSource(kind="hub", path="Salesforce/wikitext", name="wikitext-2-raw-v1",
                      split="test", join="concat")  # fmt: skip


def test_sun_stream_is_the_exact_join_of_the_hub_rows_with_the_empty_ones(monkeypatch, tmp_path):
    src = _hub_source(monkeypatch, ROWS)
    assert source_rows(src, "eval_text") == ROWS  # the empty rows survive
    joined = "\n\n".join(ROWS)
    assert stream_text(ROWS, "sun") == joined
    ids = Texts(str(tmp_path), None).load(src, "eval", "eval_text", "sun")
    assert get_tokenizer().decode(ids.tolist()) == joined  # character for character
    assert "\n\n\n\n\n" in joined  # a row, an empty row, a row: two separators
    header = EvalProtocol("sun").header(src, 4096)
    assert "empty rows included" in header["stream"] and "Sun et al.'s" in header["stream"]
    assert "independent windows" in header["window"] and "remainder dropped" in header["window"]


def test_a_local_file_without_empty_rows_is_not_called_suns_stream(tmp_path):
    path = tmp_path / "wiki.test.raw"
    path.write_bytes("".join(r for r in ROWS if r).replace("\n", "\r\n").encode())
    src = TextSource(kind="local", path=str(path), join="concat")
    rows = source_rows(src, "eval_text")
    assert rows == [r for r in ROWS if r]  # CRLF read as LF; the empty rows are not there
    assert stream_text(rows, "sun") != "\n\n".join(ROWS)
    line = EvalProtocol("sun").header(src, 4096)["stream"]
    assert "no empty rows" in line and "not Sun et al.'s stream" in line


def test_independent_windows_score_each_window_alone_and_drop_the_remainder():
    model = _tiny_model(block_size=8)
    ids = torch.randint(0, 97, (8 * 5 + 3,), generator=torch.Generator().manual_seed(2))
    res = perplexity(model, ids, block_size=8, batch_size=2, independent=True)
    nll = []
    with torch.no_grad():  # Sun et al.'s eval_ppl: each window of 8 alone, 7 targets each
        for i in range(len(ids) // 8):
            x = ids[i * 8 : (i + 1) * 8]
            logits = model(x[None])[0][0]
            nll.append(F.cross_entropy(logits[:-1], x[1:], reduction="none"))
    assert res.windows == 5 and res.tokens == 5 * 7
    assert res.nll == pytest.approx(float(torch.cat(nll).mean()), rel=1e-6)
    chained = perplexity(model, ids, block_size=8)
    assert chained.tokens == len(ids) - 1 and chained.nll != pytest.approx(res.nll)
    assert [w.start for w in independent_plan(43, 8)] == [0, 8, 16, 24, 32]
    with pytest.raises(ValueError, match="fewer than one window"):
        independent_plan(7, 8)
    with pytest.raises(ValueError, match="stride must be null"):
        perplexity(model, ids, block_size=8, stride=4, independent=True)


def test_sun_protocol_refuses_special_tokens_and_a_stride():
    with pytest.raises(ValueError, match="without special tokens"):
        EvalProtocol("sun", add_special_tokens=True)
    with pytest.raises(ValueError, match="stride must be null"):
        EvalProtocol("sun", stride=512)
    with pytest.raises(ValueError, match="eval_stream must be one of"):
        EvalProtocol("lm_eval")


def test_the_sun_preset_sets_the_protocol_and_says_what_a_local_file_changes(
    compose_eval, tmp_path
):
    cfg = compose_eval("checkpoints=x", "eval_protocol=sun")
    assert cfg.eval_stream == "sun" and cfg.stride is None
    assert cfg.hf.max_length == 4096 and cfg.hf.add_special_tokens is False
    assert (cfg.eval_text.kind, cfg.eval_text.path, cfg.eval_text.name, cfg.eval_text.split) == (
        "hub", "Salesforce/wikitext", "wikitext-2-raw-v1", "test"
    )  # fmt: skip
    # Offline: the local copy, scored with Sun's windows; the header says it is not Sun's stream.
    ckpt = _save_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt")
    local = compose_eval("checkpoints=x").eval_text.path
    cfg = compose_eval(
        f"checkpoints={ckpt}",
        "eval_protocol=sun",
        "eval_text.kind=local",
        f"eval_text.path={local}",
        "max_eval_tokens=100",
        "methods=[]",
    )
    (result,) = evaluate(cfg)
    assert result.error is None and result.methods[0].tokens == (100 // 16) * 15  # block 16
    md = (tmp_path / "robustness.md").read_text()
    assert "not Sun et al.'s stream" in md and "remainder dropped" in md
    assert math.isfinite(result.methods[0].ppl) and np.isfinite(result.methods[0].nll)
