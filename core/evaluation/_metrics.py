"""Full-ranking evaluation: every model and baseline is scored through `evaluate`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from pocketrec import _log
from pocketrec.errors import PocketrecError
from pocketrec.evaluation._split import Split

ScoreFn = Callable[[list[np.ndarray]], np.ndarray]
"""Histories (int32 item rows, time-ordered) -> float32 scores [len(histories), num_items]."""


@dataclass(frozen=True)
class Metrics:
    """Ranking metrics averaged over the evaluated users, and the ranks behind them.

    Attributes:
        users: how many users were evaluated (their target is inside the item universe).
        hr: HR@K by K.
        ndcg: NDCG@K by K.
        mrr: mean reciprocal rank.
        ranks: float64 [users], each evaluated user's 0-based rank of the target (ties
            take the mean position); kept so that callers can compare models user by user
            (paired errors) without scoring again. Read-only; not in `as_dict`.
        user_rows: int64 [users], the row in `Split.users` of each entry of `ranks`.
    """

    users: int
    hr: dict[int, float]
    ndcg: dict[int, float]
    mrr: float
    ranks: np.ndarray = field(repr=False, compare=False)
    user_rows: np.ndarray = field(repr=False, compare=False)

    @property
    def hr_at_10(self) -> float:
        return self.hr[10]

    @property
    def ndcg_at_10(self) -> float:
        return self.ndcg[10]

    def user_ndcg(self, k: int = 10) -> np.ndarray:
        """float64 [users]: each evaluated user's NDCG@k; the mean is `ndcg[k]`."""
        return _ndcg(self.ranks, k)

    def as_dict(self) -> dict[str, float]:
        """The averages as JSON-ready values (no per-user ranks)."""
        values: dict[str, float] = {}
        for k in sorted(self.hr):
            values[f"hr@{k}"] = self.hr[k]
            values[f"ndcg@{k}"] = self.ndcg[k]
        values["mrr"] = self.mrr
        values["users"] = self.users
        return values


def _ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def paired_change(reference: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """Relative change of ``values``' mean from ``reference``'s, and its standard error.

    Both are per-user figures of the same users in the same order (`Metrics.user_ndcg`
    of two models on one split). The error is that of the mean per-user difference:
    paired, it leaves out how much users differ from each other, which both models share.

    Returns:
        ``(change, standard_error)``, both relative to ``reference``'s mean; a change
        within about two standard errors of zero is noise.
    """
    reference = np.asarray(reference, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if reference.ndim != 1 or reference.shape != values.shape or len(reference) < 2:
        raise ValueError(
            "expected per-user figures of the same two or more users, got shapes "
            f"{list(reference.shape)} and {list(values.shape)}"
        )
    base = float(reference.mean())
    if not base > 0:
        raise PocketrecError(
            f"the reference's mean is {base}; a relative change is undefined (is the "
            "reference model trained?)"
        )
    differences = values - reference
    error = float(differences.std(ddof=1)) / np.sqrt(len(differences)) / base
    return float(differences.mean()) / base, float(error)


def target_ranks(scores: np.ndarray, targets: np.ndarray, exclude: list[np.ndarray]) -> np.ndarray:
    """0-based rank of each target among the non-excluded items.

    A target tied with other items takes the mean of the tied positions.

    Args:
        scores: float [B, num_items]; modified in place (excluded items set to -inf).
        targets: int [B] item rows.
        exclude: per row, the item rows not to rank (the user's history).
    """
    for row, items in enumerate(exclude):
        scores[row, items] = -np.inf
    target_scores = scores[np.arange(len(targets)), targets]
    if not np.all(np.isfinite(target_scores)):
        raise PocketrecError(
            "a model gave a non-finite score to a target item; check the model for NaN "
            "outputs (e.g. an all-padding history) before evaluating"
        )
    higher = (scores > target_scores[:, None]).sum(axis=1)
    tied = (scores == target_scores[:, None]).sum(axis=1) - 1
    return higher + tied / 2.0


def evaluate(
    score_fn: ScoreFn,
    split: Split,
    stage: str = "valid",
    *,
    ks: Sequence[int] = (10, 50),
    batch_size: int | None = None,
    progress: bool = False,
) -> Metrics:
    """Ranks every stage target against the whole universe and averages the metrics.

    The user's history items are excluded from the ranking (at test time that includes
    the validation item). HR@K = rank < K; NDCG@K = 1/log2(rank + 2) for rank < K; MRR =
    1/(rank + 1); ranks are 0-based. The per-user ranks come back in `Metrics.ranks`.
    """
    targets = split.targets(stage)
    users = np.flatnonzero(targets >= 0)
    if len(users) == 0:
        raise PocketrecError(f"no user has a {stage} target inside the item universe")
    histories = split.histories(stage)
    if batch_size is None:
        batch_size = int(max(1, min(512, 2**24 // max(split.num_items, 1))))
    ranks = np.empty(len(users), dtype=np.float64)
    batches = range(0, len(users), batch_size)
    stages = _log.progress(batches, f"evaluate {stage}", level=logging.DEBUG, bar=progress)
    for start in stages:
        batch = users[start : start + batch_size]
        batch_histories = [histories[u] for u in batch]
        scores = np.array(score_fn(batch_histories), dtype=np.float32)
        if scores.shape != (len(batch), split.num_items):
            raise PocketrecError(
                f"score_fn returned shape {scores.shape}, expected "
                f"({len(batch)}, {split.num_items}): one score per item of the universe"
            )
        ranks[start : start + len(batch)] = target_ranks(scores, targets[batch], batch_histories)
    ranks.setflags(write=False)
    users.setflags(write=False)
    return Metrics(
        users=len(users),
        hr={k: float(np.mean(ranks < k)) for k in ks},
        ndcg={k: float(np.mean(_ndcg(ranks, k))) for k in ks},
        mrr=float(np.mean(1.0 / (ranks + 1.0))),
        ranks=ranks,
        user_rows=users,
    )
