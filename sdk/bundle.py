"""The bundle: everything a device needs to recommend, in one directory.

See docs/bundle-format.md for the layout and the manifest fields.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import BundleError
from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._runtime import SIGNATURE_KEY, UserTower, model_op_types
from pocketrec.sdk.table import ItemTable

# 2: integer tables may store float16 row scales. Version 1 bundles still open.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "user_tower.tflite"
ITEMS_FILE = "items.json"
GOLDEN_K = 10

# Largest golden user-vector deviation allowed, relative to max(1, max|golden vector|).
# Golden outputs may be checked on another CPU or kernel library than the one that wrote
# them: float kernels agree closely, quantized kernels may round activations differently.
GOLDEN_TOLERANCE = {"float32": 1e-4, "float16": 1e-3, "dynamic": 2e-2, "int8": 5e-2}
_DEFAULT_TOLERANCE = 5e-2
# Golden scores are recomputed from the golden user vectors with the item table alone,
# which is plain numpy on the same stored values: only summation order differs.
_TABLE_TOLERANCE = 1e-4

_REQUIRED = {
    "format_version": int,
    "model_version": str,
    "created_at": str,
    "item_count": int,
    "embedding_dim": int,
    "history_length": int,
    "model": dict,
    "table": dict,
    "recipe": str,
    "metrics": dict,
    "files": dict,
    "golden": dict,
    "extra": dict,
}


def write_bundle(
    out_dir: str | Path,
    *,
    model: bytes,
    table: ItemTable,
    item_ids: Sequence[str],
    history_length: int,
    items_metadata: Sequence[Mapping[str, Any]] | None = None,
    model_version: str | None = None,
    metrics: Mapping[str, Any] | None = None,
    recipe: str = "float32",
    quantization: str = "float32",
    accelerator: str = "cpu",
    extra: Mapping[str, Any] | None = None,
    golden_histories: Sequence[Sequence[str]] | None = None,
) -> Path:
    """Writes a bundle directory atomically and returns its path.

    Args:
        out_dir: the bundle directory; replaced if it already holds a bundle.
        model: the user tower ``.tflite`` bytes (signature ``user_vector``).
        table: item vectors; row ``i`` belongs to ``item_ids[i]``.
        item_ids: external item ids, unique strings, one per table row.
        history_length: ``L`` of the model's ``history`` input.
        items_metadata: per item a JSON-able dict (e.g. ``title``, ``genres``), or None.
        model_version: free text; default ``"sha256-"`` + the model's first 12 hex digits.
        metrics: free-form JSON-able numbers (numpy scalars and arrays are converted).
        recipe, quantization, accelerator: how the model was compressed and where it runs;
            ``quantization`` also picks the golden self-check tolerance (`GOLDEN_TOLERANCE`).
        extra: free-form JSON-able data.
        golden_histories: histories of external ids whose outputs are recorded for the
            self-check; default: a few picked deterministically from ``item_ids`` (one empty).

    Raises:
        ValueError: for inconsistent arguments, or ``out_dir`` holding something else.
        BundleError: if the model does not follow the user tower contract.
    """
    item_ids = [str(i) for i in item_ids]
    if len(item_ids) != table.num_items:
        raise ValueError(f"got {len(item_ids)} item ids for a table of {table.num_items} rows")
    if not item_ids:
        raise ValueError("a bundle needs at least one item")
    if len(set(item_ids)) != len(item_ids):
        raise ValueError("item ids must be unique")
    items = _items_document(item_ids, items_metadata)
    out = Path(out_dir)
    if out.exists() and not _replaceable(out):
        raise ValueError(
            f"{out} exists and is not a bundle (no {MANIFEST_FILE}); refusing to overwrite it. "
            "Pick an empty or new directory."
        )
    model = bytes(model)
    tower = UserTower(model, history_length=history_length, dim=table.dim)
    if golden_histories is None:
        golden_histories = _default_golden_histories(item_ids, history_length)
    if not golden_histories:
        raise ValueError("golden_histories must hold at least one history (it may be empty)")
    golden = _golden(tower, table, item_ids, golden_histories)
    digest = hashlib.sha256(model).hexdigest()
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "model_version": model_version if model_version is not None else f"sha256-{digest[:12]}",
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "item_count": table.num_items,
        "embedding_dim": table.dim,
        "history_length": int(history_length),
        "model": {
            "file": MODEL_FILE,
            "signature": SIGNATURE_KEY,
            "inputs": {
                "history": {"dtype": "float32", "shape": [-1, history_length, table.dim]},
                "mask": {"dtype": "float32", "shape": [-1, history_length]},
            },
            "outputs": {"user_vector": {"dtype": "float32", "shape": [-1, table.dim]}},
            "quantization": str(quantization),
            "accelerator": str(accelerator),
            "ops": model_op_types(model),
        },
        "table": {},
        "recipe": str(recipe),
        "metrics": _jsonable(dict(metrics or {})),
        "files": {},
        "golden": golden,
        "extra": _jsonable(dict(extra or {})),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        tmp.chmod(0o755)
        (tmp / MODEL_FILE).write_bytes(model)
        manifest["table"] = table.save(tmp)
        _write_json(tmp / ITEMS_FILE, items)
        manifest["files"] = {
            p.name: _sha256(p) for p in sorted(tmp.iterdir()) if p.name != MANIFEST_FILE
        }
        _write_json(tmp / MANIFEST_FILE, manifest)
        _swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a bundle, with its required fields checked.

    Raises:
        BundleError: if the manifest is missing, not JSON, or lacks required fields.
    """
    path = Path(bundle_dir) / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(f"{path} does not exist; {bundle_dir} is not a bundle")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); rewrite the bundle") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"{path} must hold a JSON object, found {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS or isinstance(version, bool):
        readable = ", ".join(map(str, READABLE_FORMAT_VERSIONS))
        raise BundleError(
            f"{path}: this SDK reads bundle format_version {readable}, found {version!r}; "
            "rewrite the bundle with this version of pocketrec, or update the SDK"
        )
    for key, kind in _REQUIRED.items():
        value = manifest.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BundleError(
                f"{path}: field {key!r} must be a {kind.__name__}, found {value!r}; "
                "rewrite the bundle with write_bundle"
            )
    model = manifest["model"]
    if not isinstance(model.get("file"), str) or model.get("signature") != SIGNATURE_KEY:
        raise BundleError(
            f"{path}: model must name its file and signature {SIGNATURE_KEY!r}, found {model!r}"
        )
    for name in manifest["files"]:
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise BundleError(f"{path}: files must be plain file names, found {name!r}")
    return manifest


def verify_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Checks a bundle completely and returns its manifest.

    Checks: every file is present and matches its sha256; the table, ``items.json`` and
    the model's signature match the manifest's shapes; running the model on the golden
    histories reproduces the golden user vectors within `GOLDEN_TOLERANCE` and the table
    reproduces the golden scores.

    Raises:
        BundleError: naming the first check that failed.
    """
    loaded = _load_bundle(bundle_dir, verify_checksums=True)
    tower = UserTower(
        loaded.model,
        history_length=loaded.manifest["history_length"],
        dim=loaded.manifest["embedding_dim"],
    )
    _check_golden(loaded, tower)
    return loaded.manifest


def bundle_size(bundle_dir: str | Path) -> dict[str, dict[str, int]]:
    """Raw and gzip (level 9) bytes of the bundle's model, its table, and all its files.

    Returns:
        ``{"model": {"raw", "gzip"}, "table": {"raw", "gzip"}, "total": {"raw", "gzip"}}``;
        gzip sizes are per file, summed, as an app package compresses each file alone.
    """
    directory = Path(bundle_dir)
    manifest = read_manifest(directory)
    table_files = set(_table_files(manifest))
    sizes = {part: {"raw": 0, "gzip": 0} for part in ("model", "table", "total")}
    for name in [MANIFEST_FILE, *manifest["files"]]:
        data = _read_file(directory / name)
        raw, packed = len(data), len(gzip.compress(data, compresslevel=9, mtime=0))
        parts = ["total"]
        if name == manifest["model"]["file"]:
            parts.append("model")
        if name in table_files:
            parts.append("table")
        for part in parts:
            sizes[part]["raw"] += raw
            sizes[part]["gzip"] += packed
    return sizes


@dataclass(frozen=True)
class _LoadedBundle:
    """A bundle's parts in memory."""

    directory: Path
    manifest: dict[str, Any]
    table: ItemTable
    item_ids: list[str]
    items: list[dict[str, Any]]
    model: bytes


def _load_bundle(
    bundle_dir: str | Path, *, verify_checksums: bool, mmap: bool = True
) -> _LoadedBundle:
    """Reads a bundle and checks file presence and shapes (and checksums when asked)."""
    directory = Path(bundle_dir)
    manifest = read_manifest(directory)
    files: dict[str, str] = manifest["files"]
    required = [manifest["model"]["file"], ITEMS_FILE, *_table_files(manifest)]
    unlisted = [name for name in required if name not in files]
    if unlisted:
        raise BundleError(
            f"{directory}: manifest 'files' must list {unlisted} with their sha256; "
            "rewrite the bundle"
        )
    missing = [name for name in files if not (directory / name).is_file()]
    if missing:
        raise BundleError(f"{directory}: files {missing} are missing; the bundle is incomplete")
    if verify_checksums:
        for name, expected in files.items():
            found = _sha256(directory / name)
            if found != expected:
                raise BundleError(
                    f"{directory / name}: sha256 {found} does not match the manifest's "
                    f"{expected}; the bundle is corrupt, copy it again"
                )
    count, dim = manifest["item_count"], manifest["embedding_dim"]
    table = ItemTable.load(directory, manifest["table"], mmap=mmap)
    if (table.num_items, table.dim) != (count, dim):
        raise BundleError(
            f"{directory}: manifest says {count} items of dim {dim}, the item table holds "
            f"{table.num_items} of dim {table.dim}"
        )
    items = _read_items(directory / ITEMS_FILE)
    if len(items) != count:
        raise BundleError(
            f"{directory / ITEMS_FILE}: expected {count} items as in the manifest, "
            f"found {len(items)}"
        )
    model = _read_file(directory / manifest["model"]["file"])
    item_ids = [item["id"] for item in items]
    return _LoadedBundle(directory, manifest, table, item_ids, items, model)


def _check_golden(loaded: _LoadedBundle, tower: UserTower) -> None:
    """Runs ``tower`` on the golden histories and compares with the recorded outputs.

    Raises:
        BundleError: if outputs differ beyond the tolerance for the model's quantization.
    """
    manifest = loaded.manifest
    golden = manifest["golden"]
    try:
        histories = [[str(i) for i in h] for h in golden["histories"]]
        expected = np.asarray(golden["user_vectors"], dtype=np.float32)
        top_ids = [[str(i) for i in t["item_ids"]] for t in golden["top_k"]]
        top_scores = [np.asarray(t["scores"], dtype=np.float32) for t in golden["top_k"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{loaded.directory}: golden must hold histories, user_vectors and top_k "
            f"(item_ids, scores): {exc}"
        ) from exc
    if (
        not histories
        or expected.shape != (len(histories), loaded.table.dim)
        or len(top_ids) != len(histories)
    ):
        raise BundleError(
            f"{loaded.directory}: golden holds {len(histories)} histories, "
            f"{len(top_ids)} top_k lists and user_vectors of shape {list(expected.shape)}; "
            f"expected user_vectors [{len(histories)}, {loaded.table.dim}]"
        )
    row_of = {item_id: row for row, item_id in enumerate(loaded.item_ids)}
    rows = [_rows(h, row_of, "golden history") for h in histories]
    history, mask = encode_histories(loaded.table, rows, manifest["history_length"])
    actual = tower.run(history, mask)
    quantization = manifest["model"].get("quantization")
    rtol = GOLDEN_TOLERANCE.get(quantization, _DEFAULT_TOLERANCE)
    _compare(actual, expected, rtol, f"user vectors ({quantization} model)", loaded.directory)
    scores = loaded.table.scores(expected)
    for b, (ids, want) in enumerate(zip(top_ids, top_scores, strict=True)):
        got = scores[b, _rows(ids, row_of, "golden top_k")]
        _compare(got, want, _TABLE_TOLERANCE, f"top-k scores of history {b}", loaded.directory)


def _compare(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str, where: Path) -> None:
    if actual.shape != expected.shape:
        raise BundleError(
            f"{where}: golden {what} expected shape {list(expected.shape)}, "
            f"got {list(actual.shape)}"
        )
    if not actual.size:
        return
    error = float(np.abs(actual.astype(np.float64) - expected).max())
    allowed = rtol * max(1.0, float(np.abs(expected).max()))
    if not error <= allowed:
        raise BundleError(
            f"{where}: golden self-check failed: {what} differ by {error:.3g}, more than the "
            f"{allowed:.3g} allowed; the model or table does not match the manifest "
            "(corrupt bundle, or a runtime that computes differently)"
        )


def _golden(
    tower: UserTower,
    table: ItemTable,
    item_ids: list[str],
    histories: Sequence[Sequence[str]],
) -> dict[str, Any]:
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
    histories = [[str(i) for i in h] for h in histories]
    rows = [_rows(h, row_of, "golden history", error=ValueError) for h in histories]
    history, mask = encode_histories(table, rows, tower.history_length)
    user_vectors = tower.run(history, mask)
    scores = table.scores(user_vectors)
    k = min(GOLDEN_K, table.num_items)
    tops = []
    for row_scores in scores:
        best = top_k(row_scores, k)
        tops.append(
            {
                "item_ids": [item_ids[r] for r in best],
                "scores": [float(s) for s in row_scores[best]],
            }
        )
    return {"histories": histories, "user_vectors": user_vectors.tolist(), "top_k": tops}


def _default_golden_histories(item_ids: list[str], history_length: int) -> list[list[str]]:
    """Empty, one item, three spread items, and one longer than ``L`` (truncation)."""
    n = len(item_ids)
    return [
        [],
        [item_ids[0]],
        [item_ids[i * n // 3] for i in range(3)],
        [item_ids[(7 * i + 1) % n] for i in range(history_length + 2)],
    ]


def _rows(
    ids: Sequence[str],
    row_of: Mapping[str, int],
    what: str,
    error: type[Exception] = BundleError,
) -> list[int]:
    unknown = [i for i in ids if i not in row_of]
    if unknown:
        raise error(f"{what} names item ids {unknown[:5]} that are not in the item table")
    return [row_of[i] for i in ids]


def _items_document(
    item_ids: list[str], items_metadata: Sequence[Mapping[str, Any]] | None
) -> dict[str, Any]:
    if items_metadata is None:
        return {"items": [{"id": i} for i in item_ids]}
    if len(items_metadata) != len(item_ids):
        raise ValueError(
            f"got {len(items_metadata)} items_metadata entries for {len(item_ids)} item ids"
        )
    items = []
    for item_id, meta in zip(item_ids, items_metadata, strict=True):
        if not isinstance(meta, Mapping) or "id" in meta:
            raise ValueError(f"metadata of item {item_id!r} must be a dict without 'id': {meta!r}")
        items.append({"id": item_id, **_jsonable(dict(meta))})
    return {"items": items}


def _read_items(path: Path) -> list[dict[str, Any]]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["items"]
        if not all(isinstance(item, dict) and isinstance(item["id"], str) for item in items):
            raise TypeError("every item must be an object with a string 'id'")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{path} must be {{'items': [{{'id': str, ...}}, ...]}}: {exc}; rewrite the bundle"
        ) from exc
    return items


def _table_files(manifest: Mapping[str, Any]) -> list[str]:
    files = manifest["table"].get("files")
    if not isinstance(files, dict) or not all(isinstance(f, str) for f in files.values()):
        raise BundleError(f"manifest table entry must map roles to files, found {files!r}")
    return list(files.values())


def _replaceable(out: Path) -> bool:
    if not out.is_dir():
        return False
    return (out / MANIFEST_FILE).is_file() or not any(out.iterdir())


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Renames ``tmp`` to ``out``; an old bundle there is moved aside, then deleted."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    """Converts numpy scalars and arrays (nested in dicts and lists) to JSON types."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"metrics and extra must be finite numbers, got {value}")
    return value


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
