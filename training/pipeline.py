"""One train → evaluate → export path, shared by `pocketrec demo`, `train` and `bench`.

A run directory has one layout: ``model/`` (the saved `TrainedModel`), ``tensorboard/``
(TensorBoard event files), ``metrics.json`` (valid and test metrics of the model) and,
when asked, ``bundle/`` (a float32 bundle for the SDK).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from pocketrec._log import LOGGER
from pocketrec.evaluation import (
    BaselineResult,
    Metrics,
    Split,
    TableRow,
    evaluate,
    paired_change,
    run_baselines,
)
from pocketrec.training._trained import TrainedModel
from pocketrec.training.export import export_bundle
from pocketrec.training.fit import TrainConfig, train
from pocketrec.training.model import ModelConfig
from pocketrec.training.tuning import tune

MODEL_SUBDIR = "model"
TENSORBOARD_SUBDIR = "tensorboard"
METRICS_FILE = "metrics.json"
BUNDLE_SUBDIR = "bundle"


@dataclass(frozen=True)
class BaselineLead:
    """How far the model is ahead of the baseline that scored best on validation, on test.

    Attributes:
        baseline: that baseline's name.
        change: the model's test NDCG@10 relative to the baseline's (+0.05: 5% ahead).
        error: the standard error of ``change`` over the test users (paired: both rank
            the same users, so how much users differ cancels out).
        users: how many test users both were scored on.
    """

    baseline: str
    change: float
    error: float
    users: int

    def describe(self) -> str:
        return (
            f"test NDCG@10 against {self.baseline}, the best baseline on validation: "
            f"{self.change:+.1%} ± {self.error:.1%} (standard error over {self.users:,} "
            "users, paired)"
        )


@dataclass(frozen=True)
class TrainingRun:
    """What `run_training` produced.

    Attributes:
        trained: the model at its best validation epoch.
        valid: its validation metrics (Keras scoring).
        test: its test metrics.
        baselines: the tuned baselines by name (empty when skipped).
        out_dir: the run directory.
        bundle: the exported bundle, or None when not exported.
    """

    trained: TrainedModel
    valid: Metrics
    test: Metrics
    baselines: dict[str, BaselineResult]
    out_dir: Path
    bundle: Path | None

    @property
    def model_dir(self) -> Path:
        return self.out_dir / MODEL_SUBDIR

    @property
    def tensorboard_dir(self) -> Path:
        return self.out_dir / TENSORBOARD_SUBDIR

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / METRICS_FILE

    def metrics(self) -> dict[str, dict[str, float]]:
        """The model's metrics as JSON-ready values (what ``metrics.json`` holds)."""
        return {"valid": self.valid.as_dict(), "test": self.test.as_dict()}

    def table_rows(self, label: str) -> dict[str, TableRow]:
        """Rows for `pocketrec.evaluation.metrics_table`: the baselines (skipped ones with
        their reason), then the model."""
        rows: dict[str, TableRow] = {
            name: (result.valid, result.test) if result.test is not None else str(result.skipped)
            for name, result in self.baselines.items()
        }
        rows[label] = (self.valid, self.test)
        return rows

    def lead(self) -> BaselineLead | None:
        """The model against the baseline that scored best on validation (`baseline_lead`)."""
        return baseline_lead(self.baselines, self.test)


def baseline_lead(baselines: dict[str, BaselineResult], test: Metrics) -> BaselineLead | None:
    """``test`` (a model's test metrics) against the baseline best on validation.

    None when no baseline ran or that one scored nothing on test (no relative change
    exists). The baseline is chosen on validation, so its test score is not picked for luck.
    """
    measured = [
        (result.valid.ndcg_at_10, name, result.test)
        for name, result in baselines.items()
        if result.valid is not None and result.test is not None
    ]
    if not measured:
        return None
    _, name, baseline = max(measured, key=lambda entry: entry[0])
    if not baseline.ndcg_at_10 > 0:
        return None
    change, error = paired_change(baseline.user_ndcg(10), test.user_ndcg(10))
    return BaselineLead(name, change, error, test.users)


def run_training(
    split: Split,
    model_config: ModelConfig,
    train_config: TrainConfig,
    out_dir: str | Path,
    *,
    baselines: bool = True,
    bundle: bool = False,
    tune_seconds: float | None = None,
) -> TrainingRun:
    """Trains on ``split``, evaluates beside the baselines, saves the run, maybe exports it.

    TensorBoard logs go to ``out_dir/tensorboard`` whatever ``train_config.tensorboard_dir``
    says: a run directory keeps its layout. The baselines run first (they are quick and
    say what the model must beat). With ``tune_seconds``, `pocketrec.training.tune`
    searches settings on validation for that long after the default training.

    Raises:
        ValueError: bad settings.
        PocketrecError: training failed (see `pocketrec.training.train`).
    """
    out = Path(out_dir)
    train_config = dataclasses.replace(train_config, tensorboard_dir=str(out / TENSORBOARD_SUBDIR))
    train_config.validate()
    results: dict[str, BaselineResult] = {}
    if baselines:
        LOGGER.info("baselines (tuned on validation) ...")
        results = run_baselines(split)
    trained = (
        train(split, model_config, train_config)
        if tune_seconds is None
        else tune(split, tune_seconds, model_config, train_config)
    )
    trained.save(out / MODEL_SUBDIR)
    valid = evaluate(trained.score, split, "valid")
    test = evaluate(trained.score, split, "test")
    run = TrainingRun(trained, valid, test, results, out, None)
    run.metrics_file.write_text(json.dumps(run.metrics(), indent=2), encoding="utf-8")
    if bundle:
        LOGGER.info("exporting the float32 bundle ...")
        path = export_bundle(trained, out / BUNDLE_SUBDIR, split=split, metrics=run.metrics())
        run = dataclasses.replace(run, bundle=path)
    return run
