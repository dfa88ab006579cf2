"""The outlier probe: one forward pass of a fixed probe batch through a GPT, measured with hooks.

``run_probe(model, batch, sentence)`` runs the (uncompiled) model in eval mode under
``torch.no_grad()`` and computes the statistics of SPEC section 2 inside forward hooks, one layer
at a time, so that no activation tensor outlives its layer:

- block outputs h_l (residual stream) and MLP down-projection inputs (after GELU): massive
  activations (:func:`activation_outliers`) and kurtosis / inf-norm, also of attn and MLP outputs;
- attention: per-key mass from the variant's own ``key_mass`` (the fused kernel on CUDA, linear
  memory), so sigmoid and sink variants are measured by their own formula;
- ln_1 / ln_2 / ln_f inputs and outputs: channel-wise outliers, gamma outliers, coincidence;
- every Linear weight: row/column peak ratios, with the MLP ``c_proj`` singled out;
- consistency (paper Table 1) per layer and pooled.

The probe sentence runs as its own batch: its block outputs [L, T, C] and head-mean attention
weights [L, T, T] (small: T is a dozen tokens) are kept for the 3-D surface and heat maps.

Layer pairing of the consistency figures (documented in docs/dashboard.md):
- position consistency of layer l compares the activation-outlier tokens of the residual stream
  that attention l *reads* (the block-l input: h_{l-1}, or the embeddings for l = 0) with the
  attention-outlier keys of attention l (HF convention: hidden_states[l] vs attentions[l]);
- dimension consistency of layer l compares the activation-outlier dims of h_l with the outlier
  rows of the MLP ``c_proj`` of block l (which writes into h_l).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .activations import ActivationOutlierStats, activation_outliers
from .attention import AttentionOutlierStats, attention_outliers
from .channels import (
    ChannelOutlierStats,
    CoincidenceStats,
    GammaOutlierStats,
    channel_outliers,
    gamma_channel_coincidence,
    gamma_outliers,
)
from .consistency import ConsistencyStats, outlier_consistency
from .moments import MomentStats, moment_stats
from .weights import WeightOutlierStats, weight_outliers_by_name

PROBE_SENTENCE = "Summer is warm. Winter is cold."
PREFIX = "outliers"
#: Metric groups, one W&B section each (see :func:`wandb_key`).
GROUPS = (
    "activation",
    "mlp_input",
    "attention",
    "weight",
    "channel",
    "moments",
    "consistency",
    "summary",
)


@dataclass(frozen=True)
class ProbeThresholds:
    """Every threshold of SPEC section 2 (defaults are the SPEC's)."""

    abs_threshold: float = 100.0  # activation outlier: |h| > this ...
    median_ratio: float = 1000.0  # ... and |h| >= this x median|h|
    token_mean_ratio: float = 1000.0  # official token rule: max_c |h[t]| > this x mean|h|
    max_positions: int = 1000  # outlier coordinates kept per tensor
    attention_mass_fraction: float = 0.1  # key j is a sink when its mass >= this x T
    weight_rel_threshold: float = 3.0  # outlier row/col: ratio >= this x median ratio
    channel_tau: float = 10.0  # channel outlier: m_c >= tau x median m
    channel_magnitude: float = 6.0  # LLM.int8's |x| >= 6 ...
    channel_min_fraction: float = 0.25  # ... for at least this fraction of tokens
    gamma_tau: float = 10.0  # LayerNorm scale outlier: |gamma_c| > tau x median|gamma|
    use_token_rule: bool = False  # consistency from the token rule instead of the element rule

    @classmethod
    def from_any(cls, value: ProbeThresholds | Mapping[str, Any] | None) -> ProbeThresholds:
        """Thresholds from an instance, a (Hydra) mapping of overrides, or None (defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        given = dict(value)
        unknown = set(given) - known
        if unknown:
            raise ValueError(
                f"unknown outlier thresholds {sorted(unknown)}; valid: {sorted(known)}"
            )
        return cls(**given)


# ------------------------------------------------------------------------------- report types
@dataclass(frozen=True)
class OutlierRecord:
    """One activation outlier: a row of the W&B outlier table."""

    kind: str  # "block_output" (residual stream h_l) or "mlp_input" (c_proj input)
    source: str  # "val" (probe windows) or "sentence"
    layer: int
    sample: int
    position: int
    token_id: int
    token: str
    dim: int
    value: float

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "kind",
        "source",
        "layer",
        "sample",
        "position",
        "token_id",
        "token",
        "dim",
        "value",
    )

    def row(self) -> list[Any]:
        return [getattr(self, c) for c in self.COLUMNS]


@dataclass(frozen=True, eq=False)
class NormReport:
    """Channel outliers of one LayerNorm's input and output, its gamma outliers, and whether the
    gamma outliers coincide with the output's outlier channels (Raman et al. 2025)."""

    input: ChannelOutlierStats
    output: ChannelOutlierStats
    gamma: GammaOutlierStats
    coincidence: CoincidenceStats

    def scalars(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for part, stats in (("in", self.input), ("out", self.output)):
            s = stats.scalars()
            out.update({f"{part}/{k}": s[k] for k in ("count", "top1", "ratio", "max_fraction")})
        g = self.gamma.scalars()
        out.update({f"gamma/{k}": g[k] for k in ("count", "max_abs", "ratio")})
        c = self.coincidence.scalars()
        out.update({f"coincidence/{k}": c[k] for k in ("overlap", "jaccard")})
        return out


@dataclass(frozen=True, eq=False)
class LayerReport:
    """Everything the probe measured in block ``index``."""

    index: int
    activation: ActivationOutlierStats  # block output h_l
    mlp_input: ActivationOutlierStats  # MLP c_proj input (after GELU, width 4C)
    attention: AttentionOutlierStats  # from the variant's own weights / key mass
    moments: dict[str, MomentStats]  # "block", "attn", "mlp" outputs
    norms: dict[str, NormReport]  # "ln_1", "ln_2"
    weights: dict[str, WeightOutlierStats]  # "mlp.c_proj", "attn.c_attn", ... (block-relative)
    consistency: ConsistencyStats

    @property
    def c_proj(self) -> WeightOutlierStats:
        """The MLP down-projection (4C -> C): its outlier rows are residual feature dims."""
        return self.weights["mlp.c_proj"]

    @property
    def weight_sum(self) -> float:
        """Mean over queries (and heads, samples) of sum_j P[i, j]: 1 for softmax, below 1 when
        a sink, an extra slot or a sigmoid keeps weight off the real values."""
        a = self.attention
        return float(a.mean_mass.sum().item()) / a.num_queries


@dataclass(frozen=True, eq=False)
class SentenceReport:
    """The probe sentence: its own forward pass, kept whole (T is small)."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    hidden: Tensor  # [L, T, C] block outputs, float32 CPU
    attention: Tensor  # [L, T, T] head-mean weights of the variant's formula, float32 CPU
    key_mass: Tensor  # [L, T] head-mean key mass from variant.key_mass (the batch's path)
    activation: list[ActivationOutlierStats]  # per layer, of the block outputs

    @property
    def max_layer(self) -> int:
        """The layer whose block output has the largest |h| on the sentence."""
        return max(range(len(self.activation)), key=lambda i: self.activation[i].top1)


@dataclass(frozen=True, eq=False)
class ProbeReport:
    """The probe's result. ``scalars()`` gives flat ``outliers/<group>/...`` figures."""

    variant: str
    batch_shape: tuple[int, int]
    thresholds: ProbeThresholds
    embedding: ActivationOutlierStats  # input of block 0 (read by attention 0)
    layers: list[LayerReport]
    final_norm: NormReport | None
    other_weights: dict[str, WeightOutlierStats]  # Linears outside the blocks (lm_head)
    sentence: SentenceReport | None
    outliers: list[OutlierRecord]
    step: int | None = None

    @property
    def max_layer(self) -> int:
        """The layer with the largest top-1 |h_l| on the probe windows."""
        return max(range(len(self.layers)), key=lambda i: self.layers[i].activation.top1)

    def summary(self) -> dict[str, float]:
        """Cross-layer figures: the dashboard's first panels."""
        layers = self.layers
        i = self.max_layer
        act = layers[i].activation
        shares = [lay.attention.first_token_share for lay in layers]
        # Pooled consistency: counts over all layers, not a mean of per-layer fractions.
        pos_num = pos_den = 0
        for lay in layers:
            n = lay.consistency.num_activation_tokens
            if n and not math.isnan(lay.consistency.position_consistency):
                pos_num += round(lay.consistency.position_consistency * n)
                pos_den += n
        act_dims = {d for lay in layers for d in lay.activation.dims}
        rows = {r for lay in layers for r in lay.c_proj.outlier_rows}
        out = {
            "max_top1": act.top1,
            "max_top1_layer": float(i),
            "max_top1_ratio": act.ratio,
            "max_mlp_input_top1": max(lay.mlp_input.top1 for lay in layers),
            "num_activation_outliers": float(sum(lay.activation.count for lay in layers)),
            "first_token_share": sum(shares) / len(shares),
            "max_first_token_share": max(shares),
            "num_attention_outliers": float(sum(lay.attention.count for lay in layers)),
            "max_c_proj_row_ratio": max(lay.c_proj.max_row_ratio for lay in layers),
            "max_c_proj_col_ratio": max(lay.c_proj.max_col_ratio for lay in layers),
            "position_consistency": pos_num / pos_den if pos_den else math.nan,
            "dimension_consistency": (
                len(act_dims & rows) / len(act_dims) if act_dims else math.nan
            ),
            "max_kurtosis": max(lay.moments["block"].kurtosis for lay in layers),
            "num_channel_outliers": float(
                sum(n.output.count for lay in layers for n in lay.norms.values())
            ),
        }
        if self.sentence is not None:
            out["sentence_max_top1"] = max(a.top1 for a in self.sentence.activation)
        return out

    def scalars(self) -> dict[str, float]:
        """Flat figures named ``outliers/<group>/layer_XX/<stat>`` and ``outliers/summary/...``."""
        out: dict[str, float] = {}

        def put(group: str, scope: str, values: Mapping[str, float]) -> None:
            for k, v in values.items():
                out[f"{PREFIX}/{group}/{scope}/{k}"] = float(v)

        for lay in self.layers:
            scope = f"layer_{lay.index:02d}"
            put("activation", scope, lay.activation.scalars())
            put("mlp_input", scope, lay.mlp_input.scalars())
            put("attention", scope, {**lay.attention.scalars(), "weight_sum": lay.weight_sum})
            put("weight", f"{scope}/mlp_c_proj", lay.c_proj.scalars())
            for name, w in lay.weights.items():
                if name != "mlp.c_proj":  # the others: their peak ratios only
                    key = name.replace(".", "_")
                    put("weight", f"{scope}/{key}", _peak_ratios(w))
            for name, norm in lay.norms.items():
                put("channel", f"{scope}/{name}", norm.scalars())
            for name, m in lay.moments.items():
                put("moments", f"{scope}/{name}", m.scalars())
            c = lay.consistency
            put(
                "consistency",
                scope,
                {
                    "position": c.position_consistency,
                    "dimension": c.dimension_consistency,
                },
            )
        if self.final_norm is not None:
            put("channel", "ln_f", self.final_norm.scalars())
        for name, w in self.other_weights.items():
            put("weight", name.replace(".", "_"), _peak_ratios(w))
        for k, v in self.summary().items():
            out[f"{PREFIX}/summary/{k}"] = float(v)
        return out


def _peak_ratios(w: WeightOutlierStats) -> dict[str, float]:
    return {"max_row_ratio": w.max_row_ratio, "max_col_ratio": w.max_col_ratio}


def wandb_key(name: str) -> str:
    """``outliers/activation/layer_03/top1`` -> ``outliers-activation/layer_03/top1``.

    W&B's default workspace makes one panel section per *first* path segment, so the group goes
    into the first segment: one section per outlier type instead of one "outliers" section."""
    parts = name.split("/", 2)
    if len(parts) >= 2 and parts[0] == PREFIX:
        return f"{PREFIX}-{parts[1]}" + (f"/{parts[2]}" if len(parts) == 3 else "")
    return name


# ------------------------------------------------------------------------------------ capture
class _StopForward(Exception):
    """Raised by the ln_f hook: the probe needs nothing after it (saves the [B, T, V] logits)."""


@dataclass
class _Pass:
    """What the hooks of one forward pass collect (statistics, not tensors)."""

    keep_tensors: bool  # the sentence pass keeps h and attention weights
    embedding: ActivationOutlierStats | None = None
    activation: dict[int, ActivationOutlierStats] = field(default_factory=dict)
    mlp_input: dict[int, ActivationOutlierStats] = field(default_factory=dict)
    attention: dict[int, AttentionOutlierStats] = field(default_factory=dict)
    moments: dict[tuple[int, str], MomentStats] = field(default_factory=dict)
    channels: dict[tuple[str, str], ChannelOutlierStats] = field(default_factory=dict)
    hidden: dict[int, Tensor] = field(default_factory=dict)
    weights: dict[int, Tensor] = field(default_factory=dict)
    key_mass: dict[int, Tensor] = field(default_factory=dict)


def _blocks(model: nn.Module) -> Sequence[nn.Module]:
    try:
        return list(model.transformer.h)  # type: ignore[union-attr]
    except AttributeError:
        raise TypeError("run_probe expects a nanoGPT-shaped GPT (model.transformer.h)") from None


def _key_mass(variant: nn.Module, q: Tensor, k: Tensor, v: Tensor, x: Tensor) -> Tensor:
    """Per-head key mass [B, H, T] by the variant's own formula. The fused kernel path is linear
    in memory; the reference path materialises [b, H, T, T], so it goes one sample at a time."""
    if getattr(variant, "fused", False) and variant.resolved_impl(q) == "triton":
        return variant.key_mass(q, k, v, x).float()
    return torch.cat(
        [
            variant.key_mass(q[i : i + 1], k[i : i + 1], v[i : i + 1], x[i : i + 1]).float()
            for i in range(q.shape[0])
        ]
    )


def _register(model: nn.Module, rec: _Pass, th: ProbeThresholds) -> list[Any]:
    """Forward hooks that turn each layer's tensors into statistics as soon as they exist."""
    act = dict(
        abs_threshold=th.abs_threshold,
        median_ratio=th.median_ratio,
        token_mean_ratio=th.token_mean_ratio,
        max_positions=th.max_positions,
    )
    chan = dict(
        tau=th.channel_tau, magnitude=th.channel_magnitude, min_fraction=th.channel_min_fraction
    )
    handles = []
    blocks = _blocks(model)

    def on_embedding(_m, args):
        rec.embedding = activation_outliers(args[0], **act)

    def on_block(i):
        def hook(_m, _args, out):
            rec.activation[i] = activation_outliers(out, **act)
            if rec.keep_tensors:
                rec.hidden[i] = out[0].detach().float().cpu()
            else:
                rec.moments[(i, "block")] = moment_stats(out)

        return hook

    def on_output(i, name):
        def hook(_m, _args, out):
            rec.moments[(i, name)] = moment_stats(out)

        return hook

    def on_mlp_input(i):
        def hook(_m, args):
            rec.mlp_input[i] = activation_outliers(args[0], **act)

        return hook

    def on_variant(i):
        def hook(variant, args, _out):
            q, k, v, x = args
            if rec.keep_tensors:  # the sentence: full weights for the heat map, T is small
                rec.weights[i] = variant.attention_weights(q, k, x)[0].float().mean(0).cpu()
            mass = _key_mass(variant, q, k, v, x)
            rec.attention[i] = attention_outliers(
                mass, num_queries=q.shape[-2], mass_fraction=th.attention_mass_fraction
            )
            if rec.keep_tensors:
                rec.key_mass[i] = mass[0].mean(0).cpu()

        return hook

    def on_norm(name):
        def hook(_m, args, out):
            rec.channels[(name, "in")] = channel_outliers(args[0], **chan)
            rec.channels[(name, "out")] = channel_outliers(out, **chan)

        return hook

    def stop(_m, _args, _out):
        raise _StopForward

    handles.append(blocks[0].register_forward_pre_hook(on_embedding))
    for i, block in enumerate(blocks):
        handles.append(block.register_forward_hook(on_block(i)))
        handles.append(block.attn.variant.register_forward_hook(on_variant(i)))
        handles.append(block.mlp.c_proj.register_forward_pre_hook(on_mlp_input(i)))
        if not rec.keep_tensors:
            handles.append(block.attn.register_forward_hook(on_output(i, "attn")))
            handles.append(block.mlp.register_forward_hook(on_output(i, "mlp")))
            handles.append(block.ln_1.register_forward_hook(on_norm(f"{i}.ln_1")))
            handles.append(block.ln_2.register_forward_hook(on_norm(f"{i}.ln_2")))
    ln_f = getattr(model.transformer, "ln_f", None)
    if ln_f is not None:
        if not rec.keep_tensors:
            handles.append(ln_f.register_forward_hook(on_norm("ln_f")))
        handles.append(ln_f.register_forward_hook(stop))  # after the stats hook
    else:
        handles.append(blocks[-1].register_forward_hook(stop))
    return handles


def _forward(model: nn.Module, idx: Tensor, rec: _Pass, th: ProbeThresholds) -> _Pass:
    handles = _register(model, rec, th)
    try:
        # .forward, not __call__: a model compiled in place (nn.Module.compile) would otherwise
        # run its compiled graph; the submodules' __call__ still fires the hooks.
        model.forward(idx)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return rec


def _norm_report(rec: _Pass, name: str, module: nn.Module, th: ProbeThresholds) -> NormReport:
    gamma = gamma_outliers(module.weight, tau=th.gamma_tau)
    out = rec.channels[(name, "out")]
    return NormReport(
        input=rec.channels[(name, "in")],
        output=out,
        gamma=gamma,
        coincidence=gamma_channel_coincidence(gamma, out),
    )


def _linear_weights(module: nn.Module, th: ProbeThresholds) -> dict[str, WeightOutlierStats]:
    linears = {n: m.weight for n, m in module.named_modules() if isinstance(m, nn.Linear)}
    return weight_outliers_by_name(linears, rel_threshold=th.weight_rel_threshold)


# --------------------------------------------------------------------------------- public API
def run_probe(
    model: nn.Module,
    batch: Tensor | None,
    sentence: Tensor | Sequence[int] | None = None,
    *,
    thresholds: ProbeThresholds | Mapping[str, Any] | None = None,
    decode: Callable[[int], str] | None = None,
    sentence_text: str = PROBE_SENTENCE,
    step: int | None = None,
    max_records: int = 200,
) -> ProbeReport:
    """Probe ``model`` on token windows ``batch`` [B, T] and the token ids of ``sentence``.

    The statistics come from ``batch`` (or from the sentence when ``batch`` is None); the sentence
    also yields the heat-map weights, the 3-D surface and its own outlier records. ``decode`` maps
    a token id to its string (ids are shown as ``<id>`` without it). ``max_records`` caps the
    outlier list (the largest |value| are kept). The model's train/eval modes are restored.
    """
    th = ProbeThresholds.from_any(thresholds)
    core = getattr(model, "_orig_mod", model)  # hooks must see the eager module, not a graph
    if batch is None and sentence is None:
        raise ValueError("run_probe needs a batch of windows, a sentence, or both")
    device = next(core.parameters()).device
    sent = None
    if sentence is not None:
        sent = torch.as_tensor(sentence, dtype=torch.long).reshape(1, -1).to(device)
        if sent.shape[1] == 0:
            raise ValueError("the probe sentence has no tokens")
    windows = sent if batch is None else batch.to(device=device, dtype=torch.long)
    if windows.dim() != 2:
        raise ValueError(f"probe batch must be [B, T] token ids, got {tuple(windows.shape)}")

    modes = {m: m.training for m in core.modules()}
    core.eval()
    try:
        with torch.no_grad():
            main = _forward(core, windows, _Pass(keep_tensors=False), th)
            sent_pass = (
                _forward(core, sent, _Pass(keep_tensors=True), th) if sent is not None else None
            )
            report = _assemble(
                core, windows, main, sent, sent_pass, th, decode, sentence_text, step, max_records
            )
    finally:
        for m, mode in modes.items():
            m.training = mode
    return report


def _assemble(
    core: nn.Module,
    windows: Tensor,
    main: _Pass,
    sent: Tensor | None,
    sent_pass: _Pass | None,
    th: ProbeThresholds,
    decode: Callable[[int], str] | None,
    sentence_text: str,
    step: int | None,
    max_records: int,
) -> ProbeReport:
    blocks = _blocks(core)
    assert main.embedding is not None
    layers = []
    for i, block in enumerate(blocks):
        weights = _linear_weights(block, th)
        # Attention l reads the block-l input: the embeddings or h_{l-1}.
        reads = main.embedding if i == 0 else main.activation[i - 1]
        pos = outlier_consistency(reads, main.attention[i], use_token_rule=th.use_token_rule)
        dim = outlier_consistency(main.activation[i], weight=weights["mlp.c_proj"])
        layers.append(
            LayerReport(
                index=i,
                activation=main.activation[i],
                mlp_input=main.mlp_input[i],
                attention=main.attention[i],
                moments={n: main.moments[(i, n)] for n in ("block", "attn", "mlp")},
                norms={
                    n: _norm_report(main, f"{i}.{n}", getattr(block, n), th)
                    for n in ("ln_1", "ln_2")
                },
                weights=weights,
                consistency=ConsistencyStats(
                    position_consistency=pos.position_consistency,
                    dimension_consistency=dim.dimension_consistency,
                    num_activation_tokens=pos.num_activation_tokens,
                    num_activation_dims=dim.num_activation_dims,
                ),
            )
        )
    ln_f = getattr(core.transformer, "ln_f", None)
    final_norm = _norm_report(main, "ln_f", ln_f, th) if ln_f is not None else None
    in_blocks = {id(m) for b in blocks for m in b.modules()}
    other = weight_outliers_by_name(
        {
            n: m.weight
            for n, m in core.named_modules()
            if isinstance(m, nn.Linear) and id(m) not in in_blocks
        },
        rel_threshold=th.weight_rel_threshold,
    )

    name = _token_namer(decode)
    sentence_report = None
    records = _records(main, windows, "val", name)
    if sent is not None and sent_pass is not None:
        ids = [int(t) for t in sent[0].tolist()]
        n = len(blocks)
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
    variant = getattr(getattr(core, "config", None), "attention", None) or type(core).__name__
    return ProbeReport(
        variant=str(variant),
        batch_shape=(int(windows.shape[0]), int(windows.shape[1])),
        thresholds=th,
        embedding=main.embedding,
        layers=layers,
        final_norm=final_norm,
        other_weights=other,
        sentence=sentence_report,
        outliers=records,
        step=step,
    )


def _token_namer(decode: Callable[[int], str] | None) -> Callable[[int], str]:
    def name(token_id: int) -> str:
        if decode is None:
            return f"<{token_id}>"
        try:
            return decode(token_id)
        except Exception:  # noqa: BLE001  (ids past the tokenizer's vocab: padded embedding rows)
            return f"<{token_id}>"

    return name


def _records(
    rec: _Pass, ids: Tensor, source: str, name: Callable[[int], str]
) -> list[OutlierRecord]:
    ids_cpu = ids.cpu()
    out = []
    for kind, per_layer in (("block_output", rec.activation), ("mlp_input", rec.mlp_input)):
        for layer, stats in sorted(per_layer.items()):
            for b, t, c, value in stats.positions:
                tok = int(ids_cpu[b, t])
                out.append(OutlierRecord(kind, source, layer, b, t, tok, name(tok), c, value))
    return out


__all__ = [
    "GROUPS",
    "PREFIX",
    "PROBE_SENTENCE",
    "LayerReport",
    "NormReport",
    "OutlierRecord",
    "ProbeReport",
    "ProbeThresholds",
    "SentenceReport",
    "run_probe",
    "wandb_key",
]
