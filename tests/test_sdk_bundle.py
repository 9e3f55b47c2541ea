"""Bundle writing, reading and verification with a real converted user tower."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from _sdk_fixtures import (
    DIM,
    HISTORY_LENGTH,
    NUM_ITEMS,
    item_ids,
    item_vectors,
    nan_on_empty_tower,
    run_in_threads,
    user_tower,
    write_tiny_bundle,
)

from pocketrec.errors import BundleError
from pocketrec.sdk import (
    TABLE_DTYPES,
    Bundle,
    ItemTable,
    bundle_size,
    encode_histories,
    read_manifest,
    verify_bundle,
)


@pytest.fixture(scope="module")
def bundle_template(tmp_path_factory) -> Path:
    """One float32 bundle per module; tests that damage it work on a copy."""
    return write_tiny_bundle(tmp_path_factory.mktemp("template") / "bundle")


@pytest.fixture
def bundle(bundle_template, tmp_path) -> Path:
    return Path(shutil.copytree(bundle_template, tmp_path / "bundle"))


def _rewrite_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_manifest_describes_the_bundle(bundle_template) -> None:
    manifest = read_manifest(bundle_template)
    assert manifest["format_version"] == 2
    assert manifest["item_count"] == NUM_ITEMS
    assert manifest["embedding_dim"] == DIM
    assert manifest["history_length"] == HISTORY_LENGTH
    assert manifest["model"]["file"] == "user_tower.tflite"
    assert manifest["model"]["signature"] == "user_vector"
    assert manifest["model"]["inputs"]["history"] == {
        "dtype": "float32",
        "shape": [-1, HISTORY_LENGTH, DIM],
    }
    assert manifest["model"]["quantization"] == "float32"
    assert manifest["model"]["accelerator"] == "cpu"
    assert "FULLY_CONNECTED" in manifest["model"]["ops"]
    assert manifest["table"]["dtype"] == "float32"
    assert manifest["metrics"] == {"recall@10": 0.5}
    assert manifest["model_version"].startswith("sha256-")
    files = sorted(p.name for p in bundle_template.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == files
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((bundle_template / name).read_bytes()).hexdigest() == digest


def test_items_json_holds_ids_and_metadata_per_row(bundle_template) -> None:
    items = json.loads((bundle_template / "items.json").read_text())["items"]
    assert [item["id"] for item in items] == item_ids()
    assert items[4] == {"id": "m4", "title": "Movie 4", "genres": ["Comedy"]}


def test_golden_outputs_are_the_models_own_outputs(bundle_template) -> None:
    golden = read_manifest(bundle_template)["golden"]
    assert [] in golden["histories"]
    assert max(len(h) for h in golden["histories"]) > HISTORY_LENGTH
    table = ItemTable.quantize(item_vectors(), "float32")
    row_of = {item_id: row for row, item_id in enumerate(item_ids())}
    rows = [[row_of[i] for i in h] for h in golden["histories"]]
    history, mask = encode_histories(table, rows, HISTORY_LENGTH)
    keras_vectors = user_tower().keras_user_vectors(history, mask)
    np.testing.assert_allclose(golden["user_vectors"], keras_vectors, atol=1e-5)
    scores = keras_vectors @ item_vectors().T
    for b, top in enumerate(golden["top_k"]):
        expected = np.argsort(-scores[b], kind="stable")[:10]
        assert top["item_ids"] == [item_ids()[r] for r in expected]
        np.testing.assert_allclose(top["scores"], scores[b, expected], atol=1e-4)


@pytest.mark.parametrize("dtype", TABLE_DTYPES)
def test_bundle_of_every_table_dtype_verifies(tmp_path, dtype: str) -> None:
    path = write_tiny_bundle(tmp_path / "b", dtype=dtype, recipe=f"table-{dtype}")
    manifest = verify_bundle(path)
    assert manifest["table"]["dtype"] == dtype
    assert manifest["recipe"] == f"table-{dtype}"


def test_custom_golden_histories_and_numpy_metrics_are_recorded(tmp_path) -> None:
    path = write_tiny_bundle(
        tmp_path / "b",
        golden_histories=[["m3", "m1"]],
        metrics={"ndcg@10": np.float32(0.25), "curve": np.arange(3)},
        extra={"seed": np.int64(7)},
        model_version="v7",
    )
    manifest = verify_bundle(path)
    assert manifest["golden"]["histories"] == [["m3", "m1"]]
    assert manifest["metrics"] == {"ndcg@10": 0.25, "curve": [0, 1, 2]}
    assert manifest["extra"] == {"seed": 7}
    assert manifest["model_version"] == "v7"


def test_verify_refuses_a_file_whose_checksum_changed(bundle) -> None:
    values = bundle / "item_table.values.npy"
    data = bytearray(values.read_bytes())
    data[-1] ^= 0xFF
    values.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"item_table.values.npy: sha256 .* does not match"):
        verify_bundle(bundle)


def test_verify_refuses_a_missing_file(bundle) -> None:
    (bundle / "items.json").unlink()
    with pytest.raises(BundleError, match=r"files \['items.json'\] are missing"):
        verify_bundle(bundle)


def test_verify_refuses_golden_user_vectors_the_model_does_not_reproduce(bundle) -> None:
    def shift(manifest) -> None:
        manifest["golden"]["user_vectors"][1][0] += 0.01

    _rewrite_manifest(bundle, shift)
    with pytest.raises(BundleError, match="golden self-check failed: user vectors"):
        verify_bundle(bundle)


def test_verify_refuses_golden_scores_the_table_does_not_reproduce(bundle) -> None:
    def shift(manifest) -> None:
        manifest["golden"]["top_k"][2]["scores"][3] += 0.01

    _rewrite_manifest(bundle, shift)
    with pytest.raises(BundleError, match="golden self-check failed: top-k scores of history 2"):
        verify_bundle(bundle)


def test_verify_refuses_a_table_swapped_for_another_with_matching_checksums(
    bundle, tmp_path
) -> None:
    other = write_tiny_bundle(tmp_path / "other", model=user_tower().tflite)
    ItemTable.quantize(item_vectors(seed=9), "float32").save(other)
    shutil.copy(other / "item_table.values.npy", bundle / "item_table.values.npy")
    digest = hashlib.sha256((bundle / "item_table.values.npy").read_bytes()).hexdigest()
    _rewrite_manifest(bundle, lambda m: m["files"].update({"item_table.values.npy": digest}))
    # The history encoding reads the table too, so the user vectors are the first to differ.
    with pytest.raises(BundleError, match="golden self-check failed"):
        verify_bundle(bundle)


def test_verify_refuses_a_table_shape_that_disagrees_with_the_manifest(bundle) -> None:
    _rewrite_manifest(bundle, lambda m: m.update({"item_count": NUM_ITEMS + 1}))
    with pytest.raises(BundleError, match=rf"manifest says {NUM_ITEMS + 1} items of dim {DIM}"):
        verify_bundle(bundle)


def test_read_manifest_refuses_another_format_version_and_bad_json(bundle) -> None:
    _rewrite_manifest(bundle, lambda m: m.update({"format_version": 1}))
    assert read_manifest(bundle)["format_version"] == 1  # written before float16 scales
    _rewrite_manifest(bundle, lambda m: m.update({"format_version": 3}))
    with pytest.raises(BundleError, match=r"format_version 1, 2, found 3; .*update the SDK"):
        read_manifest(bundle)
    (bundle / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        read_manifest(bundle)
    with pytest.raises(BundleError, match="is not a bundle"):
        read_manifest(bundle.parent)


def test_write_replaces_an_existing_bundle_and_leaves_no_temporary_files(bundle) -> None:
    versions = bundle.parent / ".bundle.versions"
    for dtype in ("int8", "int4", "float16"):
        write_tiny_bundle(bundle, dtype=dtype)
        assert read_manifest(bundle)["table"]["dtype"] == dtype
        verify_bundle(bundle)
        assert sorted(p.name for p in bundle.parent.iterdir()) == [".bundle.versions", "bundle"]
    # The version in place and the one before it; nothing half-written.
    kept = sorted(versions.iterdir(), key=lambda p: p.stat().st_mtime)
    assert len(kept) == 2
    assert bundle.resolve() == kept[-1].resolve()
    assert read_manifest(kept[0])["table"]["dtype"] == "int4"


def test_save_never_leaves_a_moment_when_the_path_is_not_a_bundle(tmp_path) -> None:
    path = tmp_path / "bundle"
    bundles = [
        Bundle.open(write_tiny_bundle(tmp_path / f"b{i}", dtype=dtype))
        for i, dtype in enumerate(("float32", "int8"))
    ]
    bundles[0].save(path)
    stop = threading.Event()
    seen: list[str] = []

    def read(_: int) -> None:
        while not stop.is_set():
            seen.append(Bundle.open(path, verify=False).table.dtype)

    def save(t: int) -> None:
        if t == 0:
            try:
                for i in range(30):
                    bundles[i % 2].save(path)
            finally:
                stop.set()
        else:
            read(t)

    assert run_in_threads(save, 3) == []
    assert set(seen) == {"float32", "int8"}


def test_save_replaces_a_plain_bundle_directory_of_an_older_pocketrec(bundle) -> None:
    assert bundle.is_dir() and not bundle.is_symlink()
    Bundle.open(bundle).save(bundle)
    assert bundle.is_symlink()
    verify_bundle(bundle)


def test_a_bundle_round_trips_through_bytes_files_and_directories(bundle_template, tmp_path):
    original = Bundle.open(bundle_template)
    data = original.to_bytes()
    assert data == original.to_bytes()  # deterministic
    restored = Bundle.from_bytes(data)
    assert restored.manifest == original.manifest
    assert restored.model == original.model
    assert restored.item_ids == original.item_ids == tuple(item_ids())
    assert restored.items == original.items
    np.testing.assert_array_equal(restored.table.dequantized(), original.table.dequantized())
    assert Bundle.from_files(original.files()).to_bytes() == data
    saved = Bundle.open(restored.save(tmp_path / "again"))
    assert saved.files() == original.files()
    assert saved.sizes() == bundle_size(bundle_template)


def test_from_bytes_refuses_archives_that_are_not_plain_bundles(bundle_template) -> None:
    files = Bundle.open(bundle_template).files()

    def archive(members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    with pytest.raises(BundleError, match="not a plain file at the top level"):
        Bundle.from_bytes(archive({**files, "../escape": b"x"}))
    with pytest.raises(BundleError, match="not listed in the manifest"):
        Bundle.from_bytes(archive({**files, "extra.bin": b"x"}))
    damaged = dict(files)
    damaged["items.json"] = damaged["items.json"].replace(b"Movie 1", b"Movie X")
    with pytest.raises(BundleError, match=r"items\.json: sha256"):
        Bundle.from_bytes(archive(damaged))
    with pytest.raises(BundleError, match="not a bundle archive"):
        Bundle.from_bytes(b"not a tar at all" * 64)


def test_verify_refuses_a_table_row_rewritten_together_with_its_checksum(bundle) -> None:
    # One item pushed to the top for almost every user, its sha256 updated to match: the
    # golden top-k, recomputed over the whole table, no longer agrees.
    values = np.load(bundle / "item_table.values.npy")
    golden = read_manifest(bundle)["golden"]["user_vectors"]
    values[17] = 3.0 * np.mean(golden, axis=0) / np.linalg.norm(np.mean(golden, axis=0))
    np.save(bundle / "item_table.values.npy", values)
    digest = hashlib.sha256((bundle / "item_table.values.npy").read_bytes()).hexdigest()
    _rewrite_manifest(bundle, lambda m: m["files"].update({"item_table.values.npy": digest}))
    with pytest.raises(BundleError, match="golden self-check failed"):
        verify_bundle(bundle)


def test_read_manifest_refuses_an_unknown_quantization(bundle) -> None:
    _rewrite_manifest(bundle, lambda m: m["model"].update({"quantization": "int3"}))
    with pytest.raises(BundleError, match=r"quantization must be one of .* found 'int3'"):
        read_manifest(bundle)


def test_write_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a bundle"):
        write_tiny_bundle(target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_write_refuses_a_model_that_returns_nan_for_an_empty_history(tmp_path) -> None:
    with pytest.raises(BundleError, match="1 of them empty"):
        write_tiny_bundle(tmp_path / "b", model=nan_on_empty_tower())
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_inconsistent_arguments(tmp_path) -> None:
    with pytest.raises(ValueError, match="got 39 item ids for a table of 40 rows"):
        write_tiny_bundle(tmp_path / "b", item_ids=item_ids()[:39])
    with pytest.raises(ValueError, match="unique"):
        write_tiny_bundle(tmp_path / "b", item_ids=["same"] * NUM_ITEMS)
    with pytest.raises(ValueError, match=r"not in the item table"):
        write_tiny_bundle(tmp_path / "b", golden_histories=[["nope"]])
    with pytest.raises(BundleError, match=r"expected history \[B, 9, 8\]"):
        write_tiny_bundle(tmp_path / "b", history_length=9)
    assert list(tmp_path.iterdir()) == []


def test_bundle_size_reports_raw_and_gzip_bytes(bundle_template) -> None:
    sizes = bundle_size(bundle_template)
    manifest = read_manifest(bundle_template)
    model_bytes = len(user_tower().tflite)
    table_files = manifest["table"]["files"].values()
    table_bytes = sum((bundle_template / f).stat().st_size for f in table_files)
    total_bytes = sum(p.stat().st_size for p in bundle_template.iterdir())
    assert sizes["model"]["raw"] == model_bytes
    assert sizes["table"]["raw"] == table_bytes
    assert sizes["total"]["raw"] == total_bytes
    for part in ("model", "table", "total"):
        assert 0 < sizes[part]["gzip"] < sizes[part]["raw"]
