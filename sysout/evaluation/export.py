"""Export a sysout ``softmax`` checkpoint as a Hugging Face GPT-2 folder.

    python -m sysout.evaluation.export <checkpoint file or run folder> <out_dir> [--which best|last]

The folder holds ``config.json`` (``activation_function``: ``gelu`` for sysout's exact GELU,
``gelu_new`` for a model run with the tanh GELU), the weights (``model.safetensors``), the GPT-2
tokenizer files built offline from tiktoken's ``r50k_base`` (or ``TOKENIZER_MISSING.txt`` saying
why they could not be built) and ``sysout_export.json`` (source checkpoint, variant, step).
``transformers.AutoModelForCausalLM.from_pretrained(out_dir)`` and tools built on it
(lm-eval-harness: ``--model hf --model_args pretrained=<out_dir>``) load it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from sysout.evaluation.checkpoints import load_checkpoint, resolve_checkpoints
from sysout.model.convert import gpt2_tokenizer, hf_gpt2_from_sysout

log = logging.getLogger(__name__)


def export_checkpoint(
    source: str | Path,
    out_dir: str | Path,
    which: str = "best",
    tiktoken_cache_dir: str | None = None,
) -> Path:
    """Write the HF GPT-2 folder of ``source`` (a .ckpt, a nanoGPT ckpt.pt or a run folder)."""
    entries = resolve_checkpoints(str(source), which=which)
    if len(entries) != 1:
        raise ValueError(
            f"{source} holds {len(entries)} runs; export one run folder or checkpoint file"
        )
    loaded = load_checkpoint(entries[0].path)
    hf = hf_gpt2_from_sysout(loaded.model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out)
    try:
        gpt2_tokenizer(tiktoken_cache_dir).save_pretrained(out)
        tokenizer_note = "gpt2 (r50k_base via tiktoken)"
    except Exception as err:  # noqa: BLE001  (weights are still useful without tokenizer files)
        tokenizer_note = f"missing: {err}"
        (out / "TOKENIZER_MISSING.txt").write_text(
            f"The GPT-2 tokenizer files could not be built here ({err}).\n"
            "sysout models use GPT-2's BPE (tiktoken r50k_base): copy the tokenizer files of "
            "any GPT-2 folder (e.g. the hub's openai-community/gpt2) into this folder, or rerun "
            "the export with TIKTOKEN_CACHE_DIR pointing at a cache that holds r50k_base.\n"
        )
        log.warning("%s: no tokenizer files (%s)", out, err)
    meta = {
        "source": str(entries[0].path),
        "variant": loaded.variant,
        "step": loaded.step,
        "activation": loaded.model.config.activation,
        "activation_function": hf.config.activation_function,
        "tokenizer": tokenizer_note,
    }
    (out / "sysout_export.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sysout.evaluation.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="a .ckpt file, a nanoGPT ckpt.pt or a run folder")
    parser.add_argument("out_dir", help="the folder to write (save_pretrained layout)")
    parser.add_argument("--which", choices=("best", "last"), default="best")
    parser.add_argument("--tiktoken-cache-dir", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out = export_checkpoint(args.source, args.out_dir, args.which, args.tiktoken_cache_dir)
    except Exception as err:  # noqa: BLE001  (a one-line reason, not a traceback)
        print(f"export failed: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out.resolve()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
