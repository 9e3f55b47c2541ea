"""Bundles for the device tests.

`POCKETREC_DEVICE_BUNDLES` names a folder of bundles (e.g. `OUT/bundles` of
`pocketrec bench`) or one bundle: that is how they run on a device that has no
TensorFlow. Without it, a small model is trained here and compressed with a few recipes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pocketrec.device_tests._bundles import build_bundles, can_build


@pytest.fixture(scope="session")
def built_bundles(tmp_path_factory) -> dict[str, Path]:
    """Recipe name -> bundle, built once from a small synthetic training run."""
    if not can_build():
        pytest.skip("building bundles needs pocketrec[compression]")
    return build_bundles(tmp_path_factory.mktemp("device-bundles"))


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
