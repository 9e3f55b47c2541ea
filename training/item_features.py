"""The item tower's features part, fitted to place items the model never saw.

An item vector is a learned id vector plus a linear function of the item's features
(genre multi-hot, title-word shares; `build_feature_encoder`). Trained jointly, the
features part only learns what the ids leave over, so a new item, which has features
and no id, lands poorly. `fit_item_features` refits that linear function by ridge
regression from the features to the trained vectors and moves the rest into the id
vectors: every known item keeps its vector, and a new item gets the regression's guess.
The ridge strength is chosen by cross-validation over the known items, on the error of
the scores that validation users would give them.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from typing import Any

import numpy as np
import tf_keras

from pocketrec.evaluation import Split
from pocketrec.sdk import ItemTable
from pocketrec.training._trained import TrainedModel
from pocketrec.training.model import (
    GENRE_PROJECTION,
    ITEM_EMBEDDING,
    TITLE_WORDS,
    ModelConfig,
    title_word_ids,
)

RIDGE_GRID = (0.1, 1.0, 10.0, 100.0)
_FOLDS = 5
# Validation users whose score errors choose the ridge strength.
_USERS = 1000


def fit_item_features(
    trained: TrainedModel, split: Split, vectors: np.ndarray | None = None
) -> float | None:
    """Refits ``trained``'s features part and id vectors in place; returns the ridge strength.

    Args:
        trained: the model; its item tower's genre projection and title-word embedding
            are set to the fit, its id vectors to ``vectors`` minus the fit.
        split: the split it was trained on (features of its items, validation histories).
        vectors: float ``[N, D]`` each item's vector must stay; None: the item tower's
            current output (without follow vectors, which features do not predict).

    Returns:
        The ridge strength chosen, or None when the model reads no item feature (nothing
        changes).
    """
    config = trained.config
    words = title_word_ids(split.titles, config)
    features, layers = feature_design(trained.item_tower, split.item_genres, words, config)
    # The table the users read: the tower's as it is, or the one it is about to output.
    current = trained.item_vectors() if vectors is None else vectors
    table = ItemTable.quantize(current, "float32")
    vectors = np.asarray(current, dtype=np.float64)[:, : config.embedding_dim]
    if features is None:
        trained.item_tower.get_layer(ITEM_EMBEDDING).set_weights([vectors.astype(np.float32)])
        return None
    strength = _cross_validated_strength(features, vectors, _score_metric(trained, split, table))
    fitted = ridge(features, vectors, strength)
    start = 0
    for layer in layers:
        rows = layer.get_weights()[0].shape[0]
        layer.set_weights([fitted[start : start + rows].astype(np.float32)])
        start += rows
    id_vectors = vectors - features @ fitted
    trained.item_tower.get_layer(ITEM_EMBEDDING).set_weights([id_vectors.astype(np.float32)])
    return strength


def feature_design(
    item_tower: tf_keras.Model, genres: np.ndarray, words: np.ndarray, config: ModelConfig
) -> tuple[Any, list[tf_keras.layers.Layer]]:
    """The item features as one sparse linear design matrix (scipy CSR, ``[N, F]``) and
    the layers its columns feed: genre multi-hots (the genre projection) and each title's
    word shares (the title-word embedding, whose mean over present words is that share
    times its rows). None and no layers when the model reads no feature."""
    import scipy.sparse

    encoder = item_tower.get_layer("feature_encoder")
    names = {layer.name for layer in encoder.layers}
    blocks, layers = [], []
    if GENRE_PROJECTION in names:
        blocks.append(scipy.sparse.csr_matrix(np.asarray(genres, dtype=np.float64)))
        layers.append(encoder.get_layer(GENRE_PROJECTION))
    if TITLE_WORDS in names:
        present = words > 0
        counts = np.maximum(present.sum(axis=1), 1)
        rows, columns = np.nonzero(present)
        shares = scipy.sparse.coo_matrix(
            (1.0 / counts[rows], (rows, words[rows, columns])),
            shape=(len(words), config.title_buckets),
        )
        blocks.append(shares.tocsr())  # a word twice in a title sums its shares
        layers.append(encoder.get_layer(TITLE_WORDS))
    if not blocks:
        return None, []
    return scipy.sparse.hstack(blocks, format="csr"), layers


def ridge(features: Any, targets: np.ndarray, strength: float) -> np.ndarray:
    """``argmin_F |features·F - targets|² + strength·|F|²`` (``features`` scipy sparse)."""
    # A column no item has (most title-word buckets of a small catalog) gets a zero row:
    # solving over the others alone gives the same answer in a fraction of the time.
    used = np.flatnonzero(features.getnnz(axis=0))
    present = features[:, used]
    gram = (present.T @ present).toarray()
    gram[np.diag_indices_from(gram)] += strength
    fitted = np.zeros((features.shape[1], targets.shape[1]))
    fitted[used] = np.linalg.solve(gram, np.asarray(present.T @ targets))
    return fitted


def _score_metric(trained: TrainedModel, split: Split, table: ItemTable) -> np.ndarray:
    """``E[u·uᵀ]`` over validation users' vectors (``[D, D]``; histories read from
    ``table``): ``eᵀ·M·e`` is the mean squared score error a vector error ``e`` causes."""
    histories = [h for h in split.histories("valid") if len(h)][:_USERS]
    dim = trained.config.embedding_dim
    if not histories:
        return np.eye(dim)
    users = trained.user_vectors(histories, table)[:, :dim].astype(np.float64)
    return users.T @ users / len(users)


def _cross_validated_strength(features: Any, vectors: np.ndarray, metric: np.ndarray) -> float:
    """The `RIDGE_GRID` strength whose fits give held-out items the smallest score error."""
    folds = np.arange(len(vectors)) % _FOLDS
    np.random.default_rng(0).shuffle(folds)
    errors = []
    for strength in RIDGE_GRID:
        error = 0.0
        for fold in range(_FOLDS):
            held = folds == fold
            fitted = ridge(features[~held], vectors[~held], strength)
            residual = features[held] @ fitted - vectors[held]
            error += float(np.einsum("id,de,ie->", residual, metric, residual))
        errors.append(error)
    return RIDGE_GRID[int(np.argmin(errors))]
