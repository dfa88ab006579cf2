"""A local lm-eval-harness task for an exported checkpoint (no network).

    python -m sysout.evaluation.lm_eval_task ../shared/data/wikitext-2-raw/wiki.test.raw tasks/
    lm_eval --model hf --model_args pretrained=exported/gpt2-sysout --include_path tasks/ \\
        --tasks sysout_wikitext2_local --device cpu

It writes ``<name>.jsonl`` (one ``{"page": ...}`` per article: the text is cut before every
top-level heading `` = Title = ``) and ``<name>.yaml``, lm-eval's own ``wikitext`` task
(rolling log-likelihood per page, its detokenizer, word / byte perplexity and bits per byte)
pointed at that file. The pages come from the local file, which lacks the hub's empty rows, so
the numbers are not those of lm-eval's ``wikitext`` task (``EleutherAI/wikitext_document_level``);
they are the same measurement of this text. Needs ``pip install 'sysout[lm_eval]'`` to run.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

DEFAULT_NAME = "sysout_wikitext2_local"
_HEADING = re.compile(r"^ = [^=].* = $")  # a top-level WikiText heading: an article starts

_TASK = """\
# Written by python -m sysout.evaluation.lm_eval_task: lm-eval's wikitext task on local pages.
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: !function {name}_utils.wikitext_detokenizer
process_results: !function {name}_utils.process_results
should_decontaminate: true
doc_to_decontamination_query: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
metadata:
  version: 1.0
"""

_UTILS = """\
# lm-eval's own wikitext detokenizer and word / byte counts (lm_eval.tasks.wikitext).
from lm_eval.tasks.wikitext.preprocess_wikitext import process_results, wikitext_detokenizer

__all__ = ["process_results", "wikitext_detokenizer"]
"""


def split_pages(text: str) -> list[str]:
    """The articles of a WikiText text: a new page before every top-level heading line."""
    pages: list[str] = []
    for line in text.replace("\r\n", "\n").splitlines(keepends=True):
        if _HEADING.match(line.rstrip("\n")) or not pages:
            pages.append("")
        pages[-1] += line
    return [p for p in pages if p.strip()]


def write_lm_eval_task(
    text_file: str | Path, out_dir: str | Path, name: str = DEFAULT_NAME
) -> Path:
    """Write the task (``<name>.yaml``, ``<name>_utils.py``, ``<name>.jsonl``) into ``out_dir``
    and return the YAML's path."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"task name must be a Python identifier (it names a module): {name!r}")
    source = Path(text_file)
    if not source.is_file():
        raise FileNotFoundError(
            f"no such text file: {source.resolve()} (the offline WikiText-2 test text is "
            "../shared/data/wikitext-2-raw/wiki.test.raw)"
        )
    pages = split_pages(source.read_text(encoding="utf-8"))
    if not pages:
        raise ValueError(f"{source}: no text to make pages of")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = (out / f"{name}.jsonl").resolve()
    with open(data, "w", encoding="utf-8") as f:
        for page in pages:
            f.write(json.dumps({"page": page}, ensure_ascii=False) + "\n")
    (out / f"{name}_utils.py").write_text(_UTILS)
    task = out / f"{name}.yaml"
    task.write_text(_TASK.format(name=name, data=json.dumps(str(data))))
    return task


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sysout.evaluation.lm_eval_task", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("text_file", help="a WikiText-style text file (wiki.test.raw)")
    parser.add_argument("out_dir", help="the folder to write; pass it to lm_eval --include_path")
    parser.add_argument("--name", default=DEFAULT_NAME, help="the task name (--tasks)")
    args = parser.parse_args(argv)
    try:
        task = write_lm_eval_task(args.text_file, args.out_dir, args.name)
    except Exception as err:  # noqa: BLE001  (a one-line reason, not a traceback)
        print(f"lm_eval_task failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {task.resolve()}; run: lm_eval --include_path {task.parent} --tasks {args.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
