"""What the CPU laboratory runs: named configurations of an experiment, grouped into plans.

A :class:`LabConfig` is one configuration (train.py overrides on top of the experiment) and a
:class:`LabRun` is one configuration at one seed. The plans of each experiment:

- ``sink_lab`` (attention sinks in minutes): ``main`` every variant with BOS, ``nobos`` without
  BOS, ``longer`` softmax and the variants with a place to park besides the tokens, longer;
- ``massive_lab`` (the residual-state peak, Guo et al. 2024's parametrisation): ``controls``
  (softmax with AdamW against Guo et al.'s two flat controls, SGD with momentum and ReLU
  attention, and gradient clipping as the committed sink lab used it), ``factors`` (sysout's own
  departures from Guo et al., one at a time: GELU, a tied head, GPT-2's init), ``nobos`` (no BOS:
  softmax against the variants with a place to park, sigmoid and ReLU attention).

Variant lists come from the registry's declared traits, never from hand-kept name lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sysout.attention import variant_names, variants_with

EXPERIMENTS = ("sink_lab", "massive_lab")
DEFAULT_STEPS = {"sink_lab": 600, "massive_lab": 5000}  # = the experiments' max_steps
PLANS = {"sink_lab": ("main", "nobos", "longer"), "massive_lab": ("controls", "factors", "nobos")}
DEFAULT_SEEDS = (1, 2, 3, 4, 5)  # every claim over five seeds: what the sweep runs and the
# reports count as planned
BASELINE = "softmax"  # the configuration every other one is compared with


def parking_variants() -> list[str]:
    """Variants with a place to park besides the tokens (an extra slot or a sink logit)."""
    return variants_with(has_slot=True)


@dataclass(frozen=True)
class LabConfig:
    """One configuration: a name, its train.py overrides, its variant, and what it tests."""

    name: str
    overrides: tuple[str, ...] = ()
    variant: str = "softmax"
    bos: bool = True
    about: str = ""


@dataclass(frozen=True)
class LabRun:
    """One configuration at one seed, for ``steps`` optimizer steps."""

    experiment: str
    plan: str
    config: LabConfig
    seed: int
    steps: int
    extra: tuple[str, ...] = field(default=())  # further overrides from the command line

    @property
    def name(self) -> str:
        return f"{self.plan}/{self.config.name}_s{self.seed}"

    def overrides(self, out: Path) -> list[str]:
        return [
            f"experiment={self.experiment}",
            f"attention={self.config.variant}",
            *self.config.overrides,
            f"data.bos={str(self.config.bos).lower()}",
            f"seed={self.seed}",
            f"trainer.max_steps={self.steps}",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            *self.extra,
            f"hydra.run.dir={out / self.name}",
        ]


def _variant(name: str, bos: bool = True, about: str = "") -> LabConfig:
    return LabConfig(name, (), name, bos, about or f"attention={name}")


def configs(experiment: str, plan: str, variants: list[str] | None = None) -> list[LabConfig]:
    """The configurations of one plan (``variants`` narrows the variant-by-variant plans)."""
    if experiment not in EXPERIMENTS:
        raise ValueError(f"unknown lab experiment {experiment!r}; choose from {EXPERIMENTS}")
    if plan not in PLANS[experiment]:
        raise ValueError(
            f"experiment {experiment} has no plan {plan!r}; its plans: {PLANS[experiment]}"
        )
    if experiment == "sink_lab":
        chosen = variants or variant_names()
        if plan == "longer":
            chosen = [v for v in chosen if v == BASELINE or v in parking_variants()]
        return [_variant(v, bos=plan != "nobos") for v in chosen]
    if plan == "controls":
        return [
            LabConfig(BASELINE, about="AdamW (Guo et al.'s optimiser), softmax attention"),
            LabConfig("sgd", ("optim=sgd",), about="SGD, momentum 0.9, lr 0.03 (Guo et al.)"),
            LabConfig("relu_attention", (), "relu", about="ReLU attention (Guo's mitigation)"),
            LabConfig(
                "clip",
                ("trainer.gradient_clip_val=1.0",),
                about="gradient clipping at 1.0 (the committed sink lab's setting)",
            ),
        ]
    if plan == "factors":
        return [
            LabConfig("gelu", ("model.activation=gelu",), about="GELU MLP (sysout's) for ReLU"),
            LabConfig("tied", ("model.tie_embeddings=true",), about="head tied to the embedding"),
            LabConfig("gpt2_init", ("model.init=gpt2",), about="GPT-2's N(0, 0.02) init"),
        ]
    chosen = variants or [BASELINE, *parking_variants(), "sigmoid", "relu"]
    return [_variant(v, bos=False) for v in chosen if v in variant_names()]


def lab_plan(
    experiment: str,
    plans: list[str],
    seeds: list[int],
    steps: int | None = None,
    variants: list[str] | None = None,
    longer_steps: int = 1500,
    extra: tuple[str, ...] = (),
) -> list[LabRun]:
    """Every run of the named plans at every seed (``longer`` runs ``longer_steps``)."""
    steps = steps or DEFAULT_STEPS[experiment]
    runs = []
    for plan in plans:
        length = longer_steps if plan == "longer" else steps
        for config in configs(experiment, plan, variants):
            runs += [LabRun(experiment, plan, config, s, length, extra) for s in seeds]
    names = [r.name for r in runs]
    if len(set(names)) != len(names):
        raise ValueError("two runs of the plan share a folder name")
    return runs
