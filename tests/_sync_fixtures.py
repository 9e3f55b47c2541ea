"""A sync server world for the sync tests: store, publisher key, device token, server."""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _sdk_fixtures import (
    DIM,
    NUM_ITEMS,
    item_ids,
    item_vectors,
    items_metadata,
    write_tiny_bundle,
)

from pocketrec.sdk import Bundle, ItemTable
from pocketrec.sdk._text import QueryEncoding
from pocketrec.sdk.catalog import Rows, generate_key, public_key_hex
from pocketrec.sdk.search import QUERY_INPUT, SEARCH_OUTPUT, SEARCH_SIGNATURE, USER_INPUT
from pocketrec.sdk.sync import SyncClient
from pocketrec.server.publish import publish
from pocketrec.server.service import serve
from pocketrec.server.store import SQLiteStore
from pocketrec.server.tokens import issue_token

FAMILY = "movies"
REPO = Path(__file__).resolve().parents[1]


@dataclass
class World:
    """A store with a publisher key, a device token and a server running on it."""

    root: Path
    store: SQLiteStore
    key: object
    token: str
    port: int

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def publish(self, bundle: Path | Bundle) -> object:
        source = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
        return publish(self.store, source, FAMILY, self.key)

    def client(self, device: str = "device", **options: object) -> SyncClient:
        return SyncClient(
            self.target,
            token=self.token,
            public_key=public_key_hex(self.key),
            family=FAMILY,
            device_dir=self.root / device,
            deadline_s=10,
            backoff_s=0.05,
            **options,
        )


def running_world(tmp_path: Path) -> Iterator[World]:
    store = SQLiteStore(tmp_path / "server.db")
    key = generate_key()
    token = issue_token(store, FAMILY, "device-1")
    with serve(store, port=0, chunk_bytes=512) as server:
        yield World(tmp_path, store, key, token, server.port)


def catalog(tmp_path: Path, name: str, *, dtype: str = "int8", seed: int = 0, **changes) -> Path:
    return write_tiny_bundle(
        tmp_path / name,
        dtype=dtype,
        table=ItemTable.quantize(item_vectors(seed=seed), dtype),
        **changes,
    )


def changed_catalog(tmp_path: Path) -> Bundle:
    """The first catalog with 3 rows changed, 2 deleted and 1 added."""
    vectors = item_vectors()
    ids, meta = item_ids(), items_metadata()
    vectors[[1, 2, 3]] = item_vectors(3, seed=7)
    keep = [i for i in range(NUM_ITEMS) if i not in (5, 7)]
    vectors = np.concatenate([vectors[keep], item_vectors(1, seed=8)])
    ids = [ids[i] for i in keep] + ["m-new"]
    meta = [meta[i] for i in keep] + [{"title": "New Movie", "genres": ["Drama"]}]
    table = ItemTable.quantize(vectors, "int8")
    return Bundle.open(catalog(tmp_path, "v1")).with_items(table, ids, meta)


def rows_of(path: Path) -> Rows:
    return Rows.of_bundle(Bundle.open(path))


def assert_same_rows(a: Rows, b: Rows) -> None:
    assert a.item_ids == b.item_ids
    assert a.metadata == b.metadata
    np.testing.assert_array_equal(a.values, b.values)
    np.testing.assert_array_equal(a.scales, b.scales)


def other_model() -> bytes:
    from _sdk_fixtures import fixed_batch_tower

    return fixed_batch_tower()[0]


SEARCH_ENCODING = QueryEncoding(buckets=64, max_tokens=8)


@functools.cache
def search_tower(seed: int = 0) -> bytes:
    """A tiny untrained search tower: the sum of the query tokens' embeddings plus the user
    vector through a fixed matrix, so the query moves the vector far from the user's."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((SEARCH_ENCODING.buckets, DIM)).astype(np.float32)
    embeddings[0] = 0.0  # id 0 pads
    mix = (0.1 * rng.standard_normal((DIM, DIM))).astype(np.float32)

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, SEARCH_ENCODING.max_tokens], tf.int32, name=QUERY_INPUT),
            tf.TensorSpec([None, DIM], tf.float32, name=USER_INPUT),
        ]
    )
    def search_vector(query: tf.Tensor, user_vector: tf.Tensor) -> dict[str, tf.Tensor]:
        words = tf.reduce_sum(tf.gather(tf.constant(embeddings), query), axis=1)
        return {SEARCH_OUTPUT: words + tf.matmul(user_vector, tf.constant(mix))}

    module = tf.Module()
    with tempfile.TemporaryDirectory() as saved:
        tf.saved_model.save(module, saved, signatures={SEARCH_SIGNATURE: search_vector})
        converter = tf.lite.TFLiteConverter.from_saved_model(
            saved, signature_keys=[SEARCH_SIGNATURE]
        )
        return bytes(converter.convert())


def with_search_tower(bundle: Path | Bundle, seed: int = 0) -> Bundle:
    """``bundle`` with the tiny search tower of ``seed``."""
    source = bundle if isinstance(bundle, Bundle) else Bundle.open(bundle)
    return source.with_search_tower(search_tower(seed), SEARCH_ENCODING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_process(db: Path, port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pocketrec.cli",
            "serve",
            "--store",
            str(db),
            "--port",
            str(port),
            "--chunk-bytes",
            "512",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    assert "serving on" in line, line
    time.sleep(0.05)
    return process
