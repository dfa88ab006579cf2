"""Lightning callback: run the outlier probe during training and log what it finds.

The probe runs at the start of training, every ``every_n_steps`` optimizer steps (right after the
optimizer step that reaches a multiple of N), and at the end of training. Scalars go to every
logger (CSV, W&B, ...); figures and the outlier table go to W&B only. Under DDP only global
rank 0 probes and logs; the other ranks skip the probe entirely and simply wait for rank 0 at
the next gradient all-reduce.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import FSDPStrategy

from sysout.data import ProbeInputs
from sysout.outliers.keys import GROUPS, PREFIX, metric_key, parse_key, summary_key
from sysout.outliers.options import ProbeOptions
from sysout.outliers.probe import run_probe
from sysout.outliers.reports import OutlierRecord, ProbeReport
from sysout.outliers.rules import OutlierThresholds

log = logging.getLogger(__name__)

STEP_METRIC = "trainer/global_step"  # the x-axis Lightning's WandbLogger logs with every entry
# Figures also reported relative to their value at step 0 (``<stat>_vs_step0``), as Guo et al.
# give the residual-state peak's growth: (group, stat).
STEP0_RELATIVE = (("residual", "first_token_norm"), ("residual", "first_token_excess"))


def wandb_key(name: str) -> str:
    """``outliers/activation/layer_03/top1`` -> ``outliers-activation/layer_03/top1``.

    W&B's default workspace makes one panel section per *first* path segment, so the group goes
    into the first segment: one section per outlier type instead of one "outliers" section."""
    parts = name.split("/", 2)
    if len(parts) >= 2 and parts[0] == PREFIX:
        return f"{PREFIX}-{parts[1]}" + (f"/{parts[2]}" if len(parts) == 3 else "")
    return name


class OutlierCallback(Callback):
    """Probe activation, attention, weight and channel outliers while training.

    Args:
        every_n_steps: probe after every N-th optimizer step (0 or None: start and end only).
        probe_windows: number of fixed validation windows in the probe batch.
        probe_sentence: the sentence of the heat map and 3-D surface (its own batch; "" none).
        thresholds: overrides of :class:`~sysout.outliers.rules.OutlierThresholds` fields (only
            those that change: the defaults live there).
        log_images: log the figures to W&B loggers.
        log_table: log the outlier table (step, layer, position, token, dim, value) to W&B.
        max_table_rows: outliers per probe in the table (largest |value| first).
            ``probe_windows``, ``probe_sentence`` and ``max_table_rows`` left None take the
            defaults of :class:`~sysout.outliers.options.ProbeOptions` (the config passes the
            shared ``probe`` group's values, null by default).
        at_train_start / at_train_end: also probe at those moments.
        wandb_sections: name W&B keys ``outliers-<group>/...`` so that W&B's default workspace
            shows one section per outlier type (it groups by the first path segment); other
            loggers always get ``outliers/<group>/...``.
        autocast: run the probe under the trainer's precision context (bf16 autocast in
            bf16-mixed training), so it measures the numerics training uses.
    """

    def __init__(
        self,
        every_n_steps: int | None = 250,
        probe_windows: int | None = None,
        probe_sentence: str | None = None,
        thresholds: OutlierThresholds | Mapping[str, Any] | None = None,
        log_images: bool = True,
        log_table: bool = True,
        max_table_rows: int | None = None,
        at_train_start: bool = True,
        at_train_end: bool = True,
        wandb_sections: bool = True,
        autocast: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError(f"every_n_steps must be >= 0, got {every_n_steps}")
        options = ProbeOptions.from_any(
            {"windows": probe_windows, "sentence": probe_sentence, "max_records": max_table_rows}
        )
        self.every_n_steps = int(every_n_steps or 0)
        self.probe_windows = options.windows
        self.probe_sentence = options.sentence
        self.thresholds = OutlierThresholds.from_any(thresholds)
        self.log_images = log_images
        self.log_table = log_table
        self.max_table_rows = options.max_records
        self.at_train_start = at_train_start
        self.at_train_end = at_train_end
        self.wandb_sections = wandb_sections
        self.autocast = autocast
        self._last_step: int | None = None
        self._inputs: ProbeInputs | None = None
        self._tables: dict[int, Any] = {}  # W&B incremental table per logger
        self._step0: dict[str, float] = {}  # STEP0_RELATIVE figures of the step-0 probe
        self.last_report: ProbeReport | None = None
        self.last_duration: float | None = None

    # ------------------------------------------------------------------------- Lightning hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if isinstance(getattr(trainer, "strategy", None), FSDPStrategy):
            # Rank 0 alone cannot run sharded blocks (their all-gathers need every rank).
            log.warning("outlier probe disabled under FSDP; evaluate.py probes the checkpoints")
            self.every_n_steps, self.at_train_start, self.at_train_end = 0, False, False
            return
        if not trainer.is_global_zero:
            return
        self._setup_wandb(trainer)
        # A run resumed from a checkpoint taken right after a probe has probed this step.
        if self.at_train_start and trainer.global_step != self._last_step:
            self._probe(trainer, pl_module)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # global_step counts optimizer steps: with gradient accumulation it only moves on the
        # micro-batch that stepped, hence the "changed" test.
        step = trainer.global_step
        if (
            trainer.is_global_zero
            and self.every_n_steps
            and step % self.every_n_steps == 0
            and step != self._last_step
        ):
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.at_train_end and trainer.global_step != self._last_step:
            self._probe(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"last_step": self._last_step, "step0": dict(self._step0)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._last_step = state_dict.get("last_step")
        self._step0 = dict(state_dict.get("step0") or {})

    # ------------------------------------------------------------------------------ the probe
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        self._last_step = step
        self._prepare(trainer, pl_module)
        model = getattr(pl_module, "model", pl_module)
        start = time.perf_counter()
        context = trainer.precision_plugin.forward_context() if self.autocast else nullcontext()
        with context:
            inputs = self._inputs
            assert inputs is not None
            report = run_probe(
                model,
                inputs.windows,
                inputs.sentence,
                thresholds=self.thresholds,
                decode=inputs.decode,
                sentence_text=self.probe_sentence,
                step=step,
                max_records=self.max_table_rows,
                query_groups=inputs.query_groups,
                token_class=inputs.token_class,
                token_class_names=inputs.token_class_names,
            )
        self.last_report = report
        scalars = report.scalars()
        scalars.update(self._relative_to_step0(scalars, step))
        self.last_duration = time.perf_counter() - start
        scalars[summary_key("probe_seconds")] = self.last_duration
        self._log(trainer, report, scalars, step)

    def _relative_to_step0(self, scalars: dict[str, float], step: int) -> dict[str, float]:
        """``<stat>_vs_step0`` = value / its value at step 0, for the STEP0_RELATIVE figures
        (none when training did not start with a probe at step 0)."""
        out = {}
        for key, value in scalars.items():
            group, layer, stat = parse_key(key)
            if (group, stat) not in STEP0_RELATIVE:
                continue
            if step == 0:
                self._step0[key] = value
            ref = self._step0.get(key)
            if ref:
                out[metric_key(group, f"{stat}_vs_step0", layer)] = value / ref
        return out

    def _prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Ask the data module for the probe's inputs once, on first use."""
        if self._inputs is not None:
            return
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "probe_inputs"):
            raise TypeError(
                "the outlier callback needs a data module with probe_inputs(count, sentence) "
                "(sysout.data.ProbeInputs); disable it with ~callbacks.outliers"
            )
        self._inputs = dm.probe_inputs(self.probe_windows, self.probe_sentence)
        if self._inputs.windows is None and not self._inputs.sentence:
            raise ValueError("the data module gave the outlier probe neither windows nor sentence")

    # -------------------------------------------------------------------------------- logging
    def _log(
        self, trainer: L.Trainer, report: ProbeReport, scalars: dict[str, float], step: int
    ) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                self._log_wandb(logger, report, scalars, step)
            else:
                logger.log_metrics(scalars, step=step)
        summary = report.summary()
        log.info(
            "outlier probe at step %d (%.2fs): max |h| %.3g at layer %d (x%.3g the median), "
            "first-token attention share %.2f, max c_proj row ratio %.3g",
            step,
            self.last_duration or 0.0,
            summary["max_top1"],
            int(summary["max_top1_layer"]),
            summary["max_top1_ratio"],
            summary["first_token_share"],
            summary["max_c_proj_row_ratio"],
        )

    def _key(self, name: str) -> str:
        return wandb_key(name) if self.wandb_sections else name

    def _setup_wandb(self, trainer: L.Trainer) -> None:
        """Plot every outlier metric against the optimizer step, one section per group."""
        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            run = logger.experiment
            if not hasattr(run, "define_metric"):
                continue
            run.define_metric(STEP_METRIC)
            for group in GROUPS:
                run.define_metric(self._key(f"{PREFIX}/{group}/") + "*", step_metric=STEP_METRIC)

    def _log_wandb(
        self, logger: WandbLogger, report: ProbeReport, scalars: dict[str, float], step: int
    ) -> None:
        import wandb

        from sysout.outliers.plots import render_png, report_figures

        payload: dict[str, Any] = {self._key(k): v for k, v in scalars.items()}
        for lay in report.layers:  # where each probe sequence's sink sits (no BOS: anywhere)
            key = metric_key("attention", "top_key_positions", lay.index)
            payload[self._key(key)] = wandb.Histogram(lay.attention.top_keys)
        if self.log_images:
            from PIL import Image

            for name, fig in report_figures(report).items():
                image = Image.open(io.BytesIO(render_png(fig)))
                payload[self._key(f"{PREFIX}/{name}")] = wandb.Image(image, caption=f"step {step}")
        if self.log_table and report.outliers:
            table = self._tables.get(id(logger))
            if table is None:
                columns = ["step", *OutlierRecord.COLUMNS]
                try:  # one table growing over the run (wandb with Table log_mode)
                    table = wandb.Table(columns=columns, log_mode="INCREMENTAL")
                    self._tables[id(logger)] = table
                except TypeError:  # older wandb: a table per probe
                    table = wandb.Table(columns=columns)
            for record in report.outliers:
                table.add_data(step, *record.row())
            payload[self._key(f"{PREFIX}/activation/outlier_table")] = table
        logger.log_metrics(payload, step=step)
