"""The outlier probe: one forward pass of fixed probe windows through a model, measured with hooks.

``run_probe(model, windows, sentence)`` runs the model (sysout's GPT or any model with an
adapter, :mod:`sysout.adapters`) in eval mode under ``torch.no_grad()``; the hooks of
:mod:`sysout.outliers.capture` compute the statistics of SPEC section 2 layer by layer, and this
module assembles them into a :class:`~sysout.outliers.reports.ProbeReport`:

- block outputs h_l (residual stream) and down-projection inputs: massive activations, the
  first token's residual peak, kurtosis / inf-norm (also of the attention and MLP outputs);
- attention: per-key mass by the model's own formula (a sysout variant's ``key_mass``, the
  fused kernel on CUDA), per-head sink shares, q/k/v norms at the sink;
- the pre-attention, pre-MLP and final norms: channel-wise outliers, gamma outliers, coincidence;
- every projection weight: row/column peak ratios, with the down-projection singled out;
- consistency (paper Table 1) per layer and pooled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from sysout.adapters import ModelAdapter, adapter_for, linear_weight

from .capture import ProbePass, forward, norm_names
from .channels import gamma_channel_coincidence, gamma_outliers
from .consistency import outlier_consistency
from .keys import GROUPS, PREFIX
from .reports import (
    PROBE_SENTENCE,
    LayerReport,
    NormReport,
    OutlierRecord,
    ProbeReport,
    SentenceReport,
)
from .rules import OutlierThresholds
from .tokens import CLASSES
from .tokens import token_class as token_class_of
from .weights import WeightOutlierStats, weight_outliers_by_name


def run_probe(
    model: nn.Module | ModelAdapter,
    batch: Tensor | None,
    sentence: Tensor | Sequence[int] | None = None,
    *,
    thresholds: OutlierThresholds | Mapping[str, Any] | None = None,
    decode: Callable[[int], str] | None = None,
    sentence_text: str = PROBE_SENTENCE,
    step: int | None = None,
    max_records: int = 200,
    query_groups: Mapping[str, Tensor] | None = None,
    token_class: Callable[[int, int], str] | None = None,
    token_class_names: Sequence[str] | None = None,
) -> ProbeReport:
    """Probe ``model`` on token windows ``batch`` [B, T] and the token ids of ``sentence``.

    The statistics come from ``batch`` (or from the sentence when ``batch`` is None); the sentence
    also yields the heat-map weights, the 3-D surface and its own outlier records. ``decode`` maps
    a token id to its string (default: the adapter's tokenizer, else ``<id>``). ``query_groups``
    name boolean masks [B, T] of ``batch``'s queries whose first-token share is also reported per
    group. ``token_class(position, token_id)`` names the class of a token, one of
    ``token_class_names``, for the share of sequences whose largest activation sits on each class
    (default: An et al.'s initial / delimiter / weak-semantic / other, from the token's string).
    ``max_records`` caps the outlier list (largest |value| kept). Modes are restored.
    """
    th = OutlierThresholds.from_any(thresholds)
    adapter = adapter_for(model)
    if batch is None and sentence is None:
        raise ValueError("run_probe needs a batch of windows, a sentence, or both")
    device = adapter.device()
    sent = None
    if sentence is not None:
        sent = torch.as_tensor(sentence, dtype=torch.long).reshape(1, -1).to(device)
        if sent.shape[1] == 0:
            raise ValueError("the probe sentence has no tokens")
    windows = sent if batch is None else batch.to(device=device, dtype=torch.long)
    if windows.dim() != 2:
        raise ValueError(f"probe batch must be [B, T] token ids, got {tuple(windows.shape)}")
    groups = dict(query_groups or {}) if batch is not None else {}
    for name, mask in groups.items():
        if tuple(mask.shape) != tuple(windows.shape):
            raise ValueError(
                f"query group {name!r} has shape {tuple(mask.shape)}, the windows "
                f"{tuple(windows.shape)}"
            )
    prefix = adapter.prefix_tokens  # learned sink tokens the model prepends: no query of ours
    groups = {
        n: torch.cat([torch.zeros(m.shape[0], prefix, dtype=torch.bool, device=m.device), m], 1)
        for n, m in groups.items()
    }
    name = _token_namer(decode or adapter.decode)
    if token_class is None:
        token_class, token_class_names = lambda p, t: token_class_of(p, name(t)), CLASSES
    names = tuple(token_class_names or ())
    classes = _classes(_with_prefix(windows, prefix), token_class, prefix)
    if prefix:
        names = (*names, PREFIX_CLASS)
    with adapter.eval_mode():
        main = forward(adapter, windows, ProbePass(False, groups, classes, names), th)
        sent_pass = forward(adapter, sent, ProbePass(True), th) if sent is not None else None
    return _assemble(
        adapter,
        windows,
        main,
        sent,
        sent_pass,
        th,
        decode or adapter.decode,
        sentence_text,
        step,
        max_records,
    )


def _norm_report(rec: ProbePass, name: str, module: nn.Module, th: OutlierThresholds):
    gamma = gamma_outliers(module.weight, th)
    out = rec.channels[(name, "out")]
    return NormReport(
        input=rec.channels[(name, "in")],
        output=out,
        gamma=gamma,
        coincidence=gamma_channel_coincidence(gamma, out),
    )


def _projection_weights(
    adapter: ModelAdapter, root: nn.Module, th: OutlierThresholds
) -> dict[str, WeightOutlierStats]:
    """Peak ratios of every projection inside ``root`` (names relative to it), as [out, in]."""
    inside = {id(m) for m in root.modules()}
    prefix = {id(m): n for n, m in root.named_modules()}
    weights = {prefix[id(m)]: linear_weight(m) for _, m in adapter.projections() if id(m) in inside}
    return weight_outliers_by_name(weights, th)


def _assemble(
    adapter: ModelAdapter,
    windows: Tensor,
    main: ProbePass,
    sent: Tensor | None,
    sent_pass: ProbePass | None,
    th: OutlierThresholds,
    decode: Callable[[int], str],
    sentence_text: str,
    step: int | None,
    max_records: int,
) -> ProbeReport:
    assert main.embedding is not None
    norms = norm_names(adapter)
    layers = []
    for i, block in enumerate(adapter.blocks()):
        weights = _projection_weights(adapter, block, th)
        down = next(n for n, m in block.named_modules() if m is adapter.parts(i).down_proj)
        # Attention l reads the block-l input: the embeddings or h_{l-1}.
        reads = main.embedding if i == 0 else main.activation[i - 1]
        consistency = outlier_consistency(
            main.activation[i],
            main.attention[i],
            weights[down],
            reads=reads,
            mlp_input=main.mlp_input[i],
            use_token_rule=th.use_token_rule,
        )
        layers.append(
            LayerReport(
                index=i,
                activation=main.activation[i],
                mlp_input=main.mlp_input[i],
                attention=main.attention[i],
                heads=main.heads[i],
                moments={n: main.moments[(i, n)] for n in ("block", "attn", "mlp")},
                norms={
                    name.split(".", 1)[1]: _norm_report(main, name, mod, th)
                    for name, mod in norms.items()
                    if name.startswith(f"{i}.")
                },
                weights=weights,
                consistency=consistency,
                down_proj_name=down,
                residual=main.residual.get(i),
                value_out=main.value_out.get(i),
            )
        )
    final = adapter.final_norm()
    final_name = next((n for n in norms if "." not in n), "final_norm")
    final_norm = _norm_report(main, final_name, final, th) if final is not None else None
    in_blocks = adapter.block_index()
    other = weight_outliers_by_name(
        {n: linear_weight(m) for n, m in adapter.projections(True) if id(m) not in in_blocks},
        th,
    )

    name = _token_namer(decode)
    windows = _with_prefix(windows, adapter.prefix_tokens)
    records = _records(main, windows, "val", name)
    sentence_report = None
    if sent is not None and sent_pass is not None:
        sent = _with_prefix(sent, adapter.prefix_tokens)
        ids = [int(t) for t in sent[0].tolist()]
        n = len(layers)
        sentence_report = SentenceReport(
            text=sentence_text,
            token_ids=ids,
            tokens=[name(t) for t in ids],
            hidden=torch.stack([sent_pass.hidden[i] for i in range(n)]),
            attention=torch.stack([sent_pass.weights[i] for i in range(n)]),
            key_mass=torch.stack([sent_pass.key_mass[i] for i in range(n)]),
            activation=[sent_pass.activation[i] for i in range(n)],
        )
        records += _records(sent_pass, sent, "sentence", name)
    records.sort(key=lambda r: -abs(r.value))
    records = sorted(
        records[:max_records],
        key=lambda r: (r.source, r.kind, r.layer, r.sample, r.position, r.dim),
    )
    return ProbeReport(
        variant=adapter.name,
        batch_shape=(int(windows.shape[0]), int(windows.shape[1]) - adapter.prefix_tokens),
        thresholds=th,
        embedding=main.embedding,
        layers=layers,
        final_norm=final_norm,
        other_weights=other,
        sentence=sentence_report,
        outliers=records,
        step=step,
        final_norm_name=final_name,
    )


SINK_TOKEN_ID = -1  # the id shown for a model's own learned sink tokens
PREFIX_CLASS = "sink_token"  # the token class of a model's own learned sink tokens


def _classes(ids: Tensor, classify: Callable[[int, int], str], prefix: int) -> list[list[str]]:
    """The class of every residual position [B][T] (a model's own sink tokens first)."""
    return [
        [PREFIX_CLASS if t < prefix else classify(t - prefix, tok) for t, tok in enumerate(row)]
        for row in ids.tolist()
    ]


def _with_prefix(ids: Tensor, prefix: int) -> Tensor:
    """Token ids aligned with the residual stream's positions: the model's learned sink tokens
    first (id -1, shown as ``<sink>``), then the input."""
    if not prefix:
        return ids
    return torch.cat(
        [
            torch.full((ids.shape[0], prefix), SINK_TOKEN_ID, dtype=ids.dtype, device=ids.device),
            ids,
        ],
        dim=1,
    )


def _token_namer(decode: Callable[[int], str]) -> Callable[[int], str]:
    def name(token_id: int) -> str:
        if token_id == SINK_TOKEN_ID:
            return "<sink>"
        try:
            return decode(token_id)
        except Exception:  # noqa: BLE001  (ids past the tokenizer's vocab: padded embedding rows)
            return f"<{token_id}>"

    return name


def _records(
    rec: ProbePass, ids: Tensor, source: str, name: Callable[[int], str]
) -> list[OutlierRecord]:
    ids_cpu = ids.cpu()
    out = []
    for kind, per_layer in (("block_output", rec.activation), ("mlp_input", rec.mlp_input)):
        for layer, stats in sorted(per_layer.items()):
            for b, t, c, value in stats.positions:
                tok = int(ids_cpu[b, t])
                text = name(tok)
                out.append(
                    OutlierRecord(
                        kind, source, layer, b, t, tok, text, c, value, token_class_of(t, text)
                    )
                )
    return out


__all__ = [
    "GROUPS",
    "PREFIX",
    "PROBE_SENTENCE",
    "LayerReport",
    "NormReport",
    "OutlierRecord",
    "ProbeReport",
    "SentenceReport",
    "run_probe",
]
