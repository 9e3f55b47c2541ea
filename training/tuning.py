"""`tune`: the default training, then a search on validation within a time budget.

The search is a seeded hill climb: each trial changes one or two settings of the best model
so far (`SEARCH_SPACE`, per objective) and trains it with early stopping; the best on
validation NDCG@10 is kept. The order of trials is fixed by the seed; how many fit in the
budget depends on the machine. Every trial is selected on validation, never on test.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec._log import LOGGER
from pocketrec.evaluation import Split
from pocketrec.training._trained import TrainedModel
from pocketrec.training.fit import TrainConfig, train
from pocketrec.training.model import ModelConfig

# objective -> setting -> values a trial may take. A setting names a ModelConfig field,
# or a TrainConfig field after "train.".
SEARCH_SPACE: dict[str, dict[str, tuple[Any, ...]]] = {
    "sequence": {
        "embedding_dim": (32, 64, 96, 128),
        "history_length": (25, 50, 100, 200),
        "num_blocks": (1, 2, 3),
        "ffn_dim": (64, 128, 256),
        "dropout": (0.1, 0.2, 0.3, 0.4, 0.5),
        "id_dropout": (0.0, 0.1, 0.2),
        "train.learning_rate": (1e-3, 2e-3, 4e-3),
    },
    "set": {
        "embedding_dim": (128, 256, 512),
        "history_length": (100, 200, 400),
        "dropout": (0.1, 0.3, 0.5),
        "train.learning_rate": (1e-3, 2e-3, 4e-3),
    },
    "ease": {
        "embedding_dim": (128, 256, 512),
        "history_length": (200, 400, 800, 1600),
    },
}
_TRAIN_PREFIX = "train."
# Proposals drawn per trial before the space counts as exhausted.
_DRAWS = 200


def tune(
    split: Split,
    budget_seconds: float,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    space: dict[str, tuple[Any, ...]] | None = None,
) -> TrainedModel:
    """Trains as `train` does, then tries variants of the winner while the budget lasts.

    The first trial is ``train(split, model_config, train_config)`` whatever the budget
    (with ``objective="auto"``: every objective it trains), so the result is never worse on
    validation than the defaults. A further trial starts only when the time spent plus the
    slowest trial of its objective so far fits in ``budget_seconds``. ``space`` (setting ->
    values, named as in `SEARCH_SPACE`) replaces the winning objective's search space.

    Returns:
        The best model on validation NDCG@10. Its ``train_config["tune"]`` records the
        budget, the seconds spent and every trial (objective, settings changed from the
        first trial's, validation NDCG@10, seconds).

    Raises:
        ValueError: a negative budget, bad settings, or a setting of ``space`` that names
            no config field.
    """
    if budget_seconds < 0:
        raise ValueError(f"expected budget_seconds >= 0, got {budget_seconds}")
    model_config = model_config if model_config is not None else ModelConfig()
    train_config = train_config if train_config is not None else TrainConfig()
    if space is not None:
        _check_space(space)
    started = time.monotonic()
    best = first = train(split, model_config, train_config)
    objective = best.train_config["objective"]
    # With "auto", the trials train the winning objective alone.
    first_model = best.config
    first_train = dataclasses.replace(train_config, objective=objective)
    trials: list[dict[str, Any]] = [
        {
            "objective": objective,
            "changes": {},
            "valid_ndcg@10": best.best_valid_ndcg,
            "seconds": round(time.monotonic() - started, 1),
        }
    ]
    space = space if space is not None else SEARCH_SPACE[objective]
    rng = np.random.default_rng(train_config.seed)
    tried = {_key({})}
    # With "auto" the first trial trained more than one objective: the winner's own time
    # is the estimate until a trial of it has run.
    first_estimate = first.train_config.get("objective_seconds", {}).get(
        objective, trials[0]["seconds"]
    )
    while time.monotonic() - started + _slowest(trials, first_estimate) <= budget_seconds:
        proposal = _propose(_best_changes(trials), space, first_model, first_train, rng, tried)
        if proposal is None:
            break
        changes, candidate_model, candidate_train = proposal
        LOGGER.info("tune: trial %d, %s ...", len(trials), _describe(changes))
        trial_started = time.monotonic()
        if candidate_train.tensorboard_dir:  # one TensorBoard run per trial
            trial_dir = Path(candidate_train.tensorboard_dir) / f"trial-{len(trials)}"
            candidate_train = dataclasses.replace(candidate_train, tensorboard_dir=str(trial_dir))
        model = train(split, candidate_model, candidate_train)
        seconds = time.monotonic() - trial_started
        trials.append(
            {
                "objective": objective,
                "changes": changes,
                "valid_ndcg@10": model.best_valid_ndcg,
                "seconds": round(seconds, 1),
            }
        )
        LOGGER.info(
            "tune: valid ndcg@10 %.4f (best %.4f)", model.best_valid_ndcg, best.best_valid_ndcg
        )
        if model.best_valid_ndcg > best.best_valid_ndcg:
            best = model
    # What the first trial chose among the objectives stays on record.
    for key in ("objective_candidates", "objective_seconds"):
        if key in first.train_config:
            best.train_config[key] = first.train_config[key]
    best.train_config["tune"] = {
        "budget_seconds": budget_seconds,
        "seconds": round(time.monotonic() - started, 1),
        "trials": trials,
    }
    LOGGER.info(
        "tune: %d trials in %.0f s; kept %s (valid ndcg@10 %.4f)",
        len(trials),
        time.monotonic() - started,
        _describe(_best_changes(trials)),
        best.best_valid_ndcg,
    )
    return best


def _slowest(trials: list[dict[str, Any]], first_estimate: float) -> float:
    """The longest search trial so far (trial 0 aside), else ``first_estimate``."""
    return max((trial["seconds"] for trial in trials[1:]), default=first_estimate)


def _best_changes(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """The settings changed by the trial with the best validation NDCG@10 (first wins ties)."""
    best = max(range(len(trials)), key=lambda i: (trials[i]["valid_ndcg@10"], -i))
    return dict(trials[best]["changes"])


def _propose(
    incumbent: dict[str, Any],
    space: dict[str, tuple[Any, ...]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    rng: np.random.Generator,
    tried: set[tuple[tuple[str, Any], ...]],
) -> tuple[dict[str, Any], ModelConfig, TrainConfig] | None:
    """One or two settings of ``incumbent`` moved to other values: the changes from the
    first trial's configs and the configs they give. None when no untried valid proposal
    turned up (a proposal the configs refuse, such as a D the heads do not divide, counts
    as tried)."""
    names = sorted(space)
    for _ in range(_DRAWS):
        changes = dict(incumbent)
        count = min(len(names), int(rng.integers(1, 3)))
        for name in rng.choice(names, size=count, replace=False):
            values = space[str(name)]
            changes[str(name)] = values[int(rng.integers(len(values)))]
        changes = {k: v for k, v in changes.items() if v != _value(k, model_config, train_config)}
        key = _key(changes)
        if key in tried:
            continue
        tried.add(key)
        try:
            return (changes, *_apply(changes, model_config, train_config))
        except ValueError:
            continue
    return None


def _apply(
    changes: dict[str, Any], model_config: ModelConfig, train_config: TrainConfig
) -> tuple[ModelConfig, TrainConfig]:
    by_config: dict[bool, dict[str, Any]] = {False: {}, True: {}}
    for name, value in changes.items():
        of_train, field = _field(name)
        by_config[of_train][field] = value
    return (
        dataclasses.replace(model_config, **by_config[False]),
        dataclasses.replace(train_config, **by_config[True]),
    )


def _value(name: str, model_config: ModelConfig, train_config: TrainConfig) -> Any:
    of_train, field = _field(name)
    return getattr(train_config if of_train else model_config, field)


def _check_space(space: dict[str, tuple[Any, ...]]) -> None:
    if not space:
        raise ValueError("space has no settings to search; pass None for SEARCH_SPACE")
    unknown = [name for name in space if not _is_field(name)]
    if unknown:
        raise ValueError(
            f"unknown settings {unknown} in space: expected ModelConfig fields or "
            f"'{_TRAIN_PREFIX}' + a TrainConfig field"
        )
    empty = [name for name, values in space.items() if not values]
    if empty:
        raise ValueError(f"settings {empty} in space have no values to try")


def _is_field(name: str) -> bool:
    of_train, field = _field(name)
    config = TrainConfig if of_train else ModelConfig
    return field in {known.name for known in dataclasses.fields(config)}


def _field(name: str) -> tuple[bool, str]:
    """(whether ``name`` is a TrainConfig setting, its field name)."""
    if name.startswith(_TRAIN_PREFIX):
        return True, name[len(_TRAIN_PREFIX) :]
    return False, name


def _key(changes: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(changes.items()))


def _describe(changes: dict[str, Any]) -> str:
    if not changes:
        return "the defaults"
    return ", ".join(f"{name} {value}" for name, value in sorted(changes.items()))
