"""`pocketrec bench-sync`: time and bytes of a full sync and of a delta, on loopback.

A synthetic catalog (default 100k items × 64, int8 rows) is published to a real server on
127.0.0.1 with a real SQLite store; a device syncs it from nothing (model + snapshot), then
a copy with a share of the rows changed is published and the device syncs the delta.
Vector bytes (table rows and their scales) and total bytes (item batches, metadata and ids
included, plus the model for the full sync) are each divided by what the same rows take as
float32, and reported apart.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec._log import LOGGER
from pocketrec.sdk import Bundle, ItemTable
from pocketrec.sdk.catalog import generate_key, public_key_hex
from pocketrec.sdk.contract import TABLE_DTYPES, check_choice
from pocketrec.sdk.sync import SyncClient, SyncResult
from pocketrec.sdk.table import stored_columns, stored_dtype

FAMILY = "bench"


@dataclass(frozen=True)
class SyncBenchConfig:
    """What `run_sync_benchmark` measures.

    Attributes:
        items: catalog size N.
        dim: vector dimension D.
        dtype: the table's stored form.
        changed: share of rows changed for the delta.
        history_length: ``L`` of the (untrained) user tower shipped with the catalog.
        seed: seeds the vectors and the changed rows.
    """

    items: int = 100_000
    dim: int = 64
    dtype: str = "int8"
    changed: float = 0.01
    history_length: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        check_choice(self.dtype, TABLE_DTYPES, "dtype")
        if self.items < 10 or self.dim < 2 or not 0 < self.changed <= 1:
            raise ValueError(
                f"expected items >= 10, dim >= 2 and 0 < changed <= 1, got {self.items}, "
                f"{self.dim} and {self.changed}"
            )


def run_sync_benchmark(config: SyncBenchConfig, work_dir: str | Path | None = None) -> dict:
    """Publishes, serves and syncs; returns the figures `pocketrec bench-sync` prints."""
    from pocketrec.server.publish import publish
    from pocketrec.server.service import serve
    from pocketrec.server.store import SQLiteStore
    from pocketrec.server.tokens import issue_token

    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = Path(tmp)
        rng = np.random.default_rng(config.seed)
        vectors = rng.standard_normal((config.items, config.dim)).astype(np.float32)
        ids = [f"item-{i:07d}" for i in range(config.items)]
        metadata = [{"title": f"Item {i}"} for i in range(config.items)]
        model = _user_tower(config)
        first = Bundle.build(
            model=model,
            table=ItemTable.quantize(vectors, config.dtype),
            item_ids=ids,
            history_length=config.history_length,
            items_metadata=metadata,
        )
        store = SQLiteStore(root / "server.db")
        key = generate_key()
        token = issue_token(store, FAMILY, "bench-device")
        started = time.perf_counter()
        publish(store, first, FAMILY, key)
        publish_s = time.perf_counter() - started

        changed = rng.choice(
            config.items, size=max(1, int(config.changed * config.items)), replace=False
        )
        vectors[changed] = rng.standard_normal((len(changed), config.dim)).astype(np.float32)
        second = first.with_items(ItemTable.quantize(vectors, config.dtype), ids, metadata)
        with serve(store, port=0) as server:
            client = SyncClient(
                f"127.0.0.1:{server.port}",
                token=token,
                public_key=public_key_hex(key),
                family=FAMILY,
                device_dir=root / "device",
                deadline_s=120,
            )
            with client:
                full = client.sync()
                publish(store, second, FAMILY, key)
                delta = client.sync()
                fresh = _publish_to_fresh(client, store, key, second, root, config)
                upload = _upload_throughput(client, root, config)
    return {
        "config": config.__dict__,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
        },
        "publish_seconds": round(publish_s, 3),
        "full": _figures(full, config),
        "delta": _figures(delta, config),
        "changed_rows": len(changed),
        "publish_to_fresh_seconds": round(fresh, 3),
        "upload": upload,
    }


def _publish_to_fresh(
    client: SyncClient,
    store: Any,
    key: Any,
    current: Bundle,
    root: Path,
    config: SyncBenchConfig,
) -> float:
    """Seconds from `publish` of a catalog with one new item until a connected device's
    `recommend` can return it (the background sync follows the watch stream)."""
    from pocketrec.sdk import Recommender
    from pocketrec.server.publish import publish

    rng = np.random.default_rng(config.seed + 1)
    vectors = np.concatenate(
        [current.table.dequantized(), rng.standard_normal((1, config.dim)).astype(np.float32)]
    )
    ids = [*current.item_ids, "item-new"]
    metadata = [{k: v for k, v in item.items() if k != "id"} for item in current.items]
    third = current.with_items(
        ItemTable.quantize(vectors, config.dtype), ids, [*metadata, {"title": "New item"}]
    )
    with Recommender.open(client.bundle_path, history_path=root / "fresh.db") as recommender:
        client.start(recommender)
        time.sleep(0.5)  # the watch stream is open
        started = time.perf_counter()
        publish(store, third, FAMILY, key)
        while "item-new" not in recommender.item_ids:
            if time.perf_counter() - started > 60:
                raise RuntimeError("the device did not get the new item within 60 s")
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        client.stop()
    return seconds


def _upload_throughput(client: SyncClient, root: Path, config: SyncBenchConfig) -> dict:
    """Events per second and bytes per event of uploading a queue of 20,000 events."""
    from pocketrec.sdk import Recommender

    with Recommender.open(client.bundle_path, history_path=root / "events.db") as recommender:
        for i in range(20_000):
            recommender.observe(f"user-{i % 500}", f"item-{i % config.items:07d}")
        result = client.upload_events(recommender)
    return {
        "events": result.acknowledged,
        "seconds": round(result.seconds, 3),
        "events_per_second": round(result.acknowledged / result.seconds),
        "bytes_per_event": round(result.request_bytes / result.acknowledged, 1),
    }


def _figures(result: SyncResult, config: SyncBenchConfig) -> dict[str, Any]:
    float32_bytes = result.rows * config.dim * 4
    row_bytes = stored_columns(config.dtype, config.dim) * stored_dtype(config.dtype).itemsize
    scale_bytes = 2 if config.dtype in ("int8", "int4") else 0
    vector_bytes = result.rows * (row_bytes + scale_bytes)
    total = result.batch_bytes + result.model_bytes
    return {
        "seconds": round(result.seconds, 3),
        "snapshot": result.snapshot,
        "rows": result.rows,
        "deleted": result.deleted,
        "model_bytes": result.model_bytes,
        "batch_bytes": result.batch_bytes,
        "vector_bytes": vector_bytes,
        "vector_ratio": round(vector_bytes / float32_bytes, 4) if float32_bytes else None,
        "total_ratio": round(total / float32_bytes, 4) if float32_bytes else None,
    }


def _user_tower(config: SyncBenchConfig) -> bytes:
    """An untrained default user tower of the catalog's dimension (the sync ships its bytes)."""
    from pocketrec.training import ModelConfig, build_user_tower, to_tflite

    model_config = ModelConfig(embedding_dim=config.dim, history_length=config.history_length)
    return to_tflite(build_user_tower(model_config))


def format_report(report: dict[str, Any]) -> str:
    """The figures as a Markdown table, with the machine and the targets."""
    config = report["config"]
    lines = [
        f"catalog {config['items']:,} × {config['dim']} {config['dtype']}, "
        f"{report['changed_rows']:,} rows changed for the delta; publish "
        f"{report['publish_seconds']} s; OPENBLAS_CORETYPE="
        f"{report['machine']['OPENBLAS_CORETYPE'] or 'unset'}",
        "",
        "| sync | seconds | rows | deleted | model bytes | batch bytes | vector ÷ float32 "
        "| total ÷ float32 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("full", "delta"):
        f = report[name]
        lines.append(
            f"| {name} | {f['seconds']} | {f['rows']:,} | {f['deleted']:,} | "
            f"{f['model_bytes']:,} | {f['batch_bytes']:,} | {f['vector_ratio']} | "
            f"{f['total_ratio']} |"
        )
    upload = report["upload"]
    lines += [
        "",
        f"publish to fresh (a new item until a watching device can recommend it): "
        f"{report['publish_to_fresh_seconds']} s",
        f"event upload: {upload['events']:,} events in {upload['seconds']} s, "
        f"{upload['events_per_second']:,} events/s, {upload['bytes_per_event']} bytes/event",
    ]
    return "\n".join(lines)


def main(config: SyncBenchConfig, out: Path | None) -> int:
    LOGGER.info("bench-sync: %s", config)
    report = run_sync_benchmark(config)
    print(format_report(report))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "sync.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
        (out / "sync.md").write_text(format_report(report) + "\n", encoding="utf-8")
    return 0
