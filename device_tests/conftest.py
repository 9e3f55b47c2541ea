"""Bundles for the device tests.

`POCKETREC_DEVICE_BUNDLES` names a folder of bundles (e.g. `OUT/bundles` of
`pocketrec bench`) or one bundle: that is how they run on a device that has no
TensorFlow. Without it, a small model is trained here and compressed with a few recipes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from device_tests._bundles import DEFAULT_RECIPES


@pytest.fixture(scope="session")
def built_bundles(tmp_path_factory) -> dict[str, Path]:
    """Recipe name -> bundle, built once from a small synthetic training run."""
    pytest.importorskip(
        "tensorflow_model_optimization", reason="building bundles needs [compression]"
    )
    from pocketrec.compression import compress
    from pocketrec.data import synthetic
    from pocketrec.evaluation import leave_last_out
    from pocketrec.training import ModelConfig, TrainConfig, train

    split = leave_last_out(synthetic(num_users=150, num_items=120, seed=1))
    trained = train(
        split,
        ModelConfig(embedding_dim=16, history_length=20, ffn_dim=32),
        TrainConfig(epochs=1, seed=1),
    )
    out = tmp_path_factory.mktemp("device-bundles")
    return {
        name: compress(trained, name, out / name, split=split, measure=False).bundle
        for name in DEFAULT_RECIPES
    }


@pytest.fixture
def bundle(request, built_bundles_lazy) -> Path:
    return built_bundles_lazy(request.param)


@pytest.fixture(scope="session")
def built_bundles_lazy(request):
    def resolve(name: str) -> Path:
        if Path(name).is_dir():
            return Path(name)
        return request.getfixturevalue("built_bundles")[name]

    return resolve
