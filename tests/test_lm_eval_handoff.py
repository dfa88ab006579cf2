"""The hand-off to lm-eval-harness: an exported sysout checkpoint runs under ``lm_eval`` with a
local task file (no network). Skipped where lm_eval is not installed (``pip install
'sysout[lm_eval]'``)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from test_evaluate import TINY, _save_ckpt

from sysout.evaluation.lm_eval_task import split_pages, write_lm_eval_task

TEXT = (
    " = Alpha = \n"
    " The alpha page is short . \n"
    " = = Part = = \n"
    " It has a part , 2 @,@ 000 words long . \n"
    " = Beta = \n"
    " Beta follows ( in its own page ) . \n"
)


def test_pages_start_at_top_level_headings_only():
    pages = split_pages(TEXT.replace("\n", "\r\n"))
    assert [p.splitlines()[0] for p in pages] == [" = Alpha = ", " = Beta = "]
    assert "".join(pages) == TEXT


def test_an_exported_checkpoint_runs_under_lm_eval_with_a_local_task(tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sysout.evaluation.export import export_checkpoint

    ckpt = _save_ckpt(tmp_path / "run" / "checkpoints" / "last.ckpt", dict(TINY, block_size=64))
    folder = export_checkpoint(ckpt, tmp_path / "exported")
    (tmp_path / "wiki.txt").write_text(TEXT)
    task = write_lm_eval_task(tmp_path / "wiki.txt", tmp_path / "tasks", "sysout_wiki_test")
    out = simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=["sysout_wiki_test"],
        task_manager=TaskManager(include_path=str(task.parent)),
        device="cpu",
        batch_size=1,
    )
    got = out["results"]["sysout_wiki_test"]["word_perplexity,none"]
    # The same number computed here: each page (shorter than the 64-token context) scored from
    # <|endoftext|>, over lm-eval's detokenized text, per word of the original page.
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    logprob, words = 0.0, 0
    for page in split_pages(TEXT):
        ids = [tok.eos_token_id, *tok(wikitext_detokenizer({"page": page}))["input_ids"]]
        assert len(ids) <= 64
        x = torch.tensor(ids)
        with torch.no_grad():
            logp = model(x[None, :-1]).logits[0].log_softmax(-1)
        logprob += float(logp.gather(1, x[1:, None]).sum())
        words += len(re.split(r"\s+", page))  # lm-eval's word count (leading/trailing "" too)
    assert got == pytest.approx(math.exp(-logprob / words), rel=1e-4)
    assert json.loads((folder / "sysout_export.json").read_text())["variant"] == "softmax"
