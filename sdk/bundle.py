"""The bundle: everything a device needs to recommend, as one checked unit.

`Bundle` is a bundle in memory: its manifest, the user tower's bytes, the item table, the
item ids and their metadata. It comes from a directory (`Bundle.open`), from file contents
or a tar archive received over a network (`Bundle.from_files`, `Bundle.from_bytes`), or
from a model and a table (`Bundle.build`), and goes to a directory with `Bundle.save`,
which swaps a versioned directory in place atomically. See docs/bundle-format.md.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.errors import BundleError
from pocketrec.sdk._encoding import encode_histories
from pocketrec.sdk._ids import item_ids as checked_item_ids
from pocketrec.sdk._ranking import top_k
from pocketrec.sdk._runtime import UserTower, model_op_types
from pocketrec.sdk._text import QueryEncoding, item_text, words
from pocketrec.sdk._text_index import TextIndex
from pocketrec.sdk.contract import (
    ACCELERATORS,
    GOLDEN_TOLERANCE,
    HISTORY_INPUT,
    MASK_INPUT,
    QUANTIZATIONS,
    SIGNATURE_KEY,
    USER_VECTOR_OUTPUT,
    check_choice,
)
from pocketrec.sdk.search import (
    SEARCH_TOWER_FILE,
    SEARCH_TOWER_QUANTIZATIONS,
    TEXT_INDEX_FILE,
    SearchSettings,
    SearchTower,
    SearchTowerSettings,
)
from pocketrec.sdk.table import ItemTable

# 2: integer tables may store float16 row scales. Version 1 bundles still open.
FORMAT_VERSION = 2
READABLE_FORMAT_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "user_tower.tflite"
ITEMS_FILE = "items.json"
GOLDEN_K = 10
# Reads of a saved bundle whose version was replaced meanwhile are retried this often.
_OPEN_ATTEMPTS = 3

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


class Bundle:
    """A parsed, checked bundle: manifest, user tower, item table, item ids and metadata.

    Build one with `open`, `from_files`, `from_bytes` or `build`. A `Bundle` is immutable
    and safe to share between threads; `with_metrics` and `with_items` return new ones.
    The `pocketrec.sdk.Recommender` serves one and can swap in another while serving.
    """

    def __init__(
        self,
        manifest: Mapping[str, Any],
        model: bytes,
        table: ItemTable,
        items: Sequence[Mapping[str, Any]],
        *,
        source: str,
        items_json: bytes | None = None,
        text_index: bytes | None = None,
        search_tower: bytes | None = None,
    ) -> None:
        """Wraps parts that were already checked; use the class methods instead.

        ``items`` is kept, not copied (every factory hands over fresh dicts);
        ``items_json``, when given, is their ``items.json`` as already serialised;
        ``text_index`` is the optional ``text_index.bin``, ``search_tower`` the optional
        ``search_tower.tflite``.
        """
        self._manifest = copy.deepcopy(dict(manifest))
        self._model = bytes(model)
        self._table = table
        self._items = list(items)
        self._item_ids = tuple(item["id"] for item in self._items)
        self._source = source
        self._items_json = items_json
        self._text_index = text_index
        self._search_tower = search_tower

    # -- reading ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, mmap: bool = True) -> Bundle:
        """Opens the bundle directory ``path`` (or the version its link points to).

        Args:
            verify: check every file's sha256 and run the golden self-check on this CPU.
            mmap: map the item table instead of reading it into memory.

        Raises:
            BundleError: naming the first check that failed.
        """
        for attempt in range(_OPEN_ATTEMPTS):
            # Resolved once per attempt, so one bundle is never read from two versions.
            directory = Path(path).resolve()
            try:
                bundle = cls._read_directory(directory, verify=verify, mmap=mmap)
            except BundleError:
                # A version is deleted two saves after it was replaced; a reader that slow
                # reads the version in place now.
                if attempt + 1 < _OPEN_ATTEMPTS and Path(path).resolve() != directory:
                    continue
                raise
            if verify:
                bundle.verify()
            return bundle
        raise AssertionError("unreachable: the last attempt returns or raises")

    @classmethod
    def _read_directory(cls, directory: Path, *, verify: bool, mmap: bool) -> Bundle:
        manifest = read_manifest(directory)
        files: dict[str, str] = manifest["files"]
        missing = [name for name in files if not (directory / name).is_file()]
        if missing:
            raise BundleError(f"{directory}: files {missing} are missing; the bundle is incomplete")
        if verify:
            for name, expected in files.items():
                _check_digest(_sha256_file(directory / name), expected, directory / name)
        table = ItemTable.load(directory, manifest["table"], mmap=mmap)
        items = _parse_items(_read_file(directory / ITEMS_FILE), directory / ITEMS_FILE)
        model = _read_file(directory / manifest["model"]["file"])
        text_index = _read_file(directory / TEXT_INDEX_FILE) if TEXT_INDEX_FILE in files else None
        tower = _read_file(directory / SEARCH_TOWER_FILE) if SEARCH_TOWER_FILE in files else None
        return cls._checked(
            manifest,
            model,
            table,
            items,
            str(directory),
            text_index=text_index,
            search_tower=tower,
        )

    @classmethod
    def from_files(
        cls, files: Mapping[str, bytes], *, verify: bool = True, source: str = "<memory>"
    ) -> Bundle:
        """A bundle from its files' contents, ``{file name: bytes}`` (``manifest.json`` too).

        Every file is checked against its sha256 whatever ``verify`` says (they are in
        memory already); ``verify`` runs the golden self-check.

        Raises:
            BundleError: naming the first check that failed.
        """
        where = Path(source)
        manifest = _parse_manifest(_required_file(files, MANIFEST_FILE, source), where)
        for name, expected in manifest["files"].items():
            data = _required_file(files, name, source)
            _check_digest(hashlib.sha256(data).hexdigest(), expected, where / name)
        unlisted = sorted(set(files) - {MANIFEST_FILE, *manifest["files"]})
        if unlisted:
            raise BundleError(f"{source}: files {unlisted} are not listed in the manifest")
        table = ItemTable.from_files(manifest["table"], files)
        items = _parse_items(files[ITEMS_FILE], where / ITEMS_FILE)
        model = files[manifest["model"]["file"]]
        text_index = files.get(TEXT_INDEX_FILE) if TEXT_INDEX_FILE in manifest["files"] else None
        tower = files.get(SEARCH_TOWER_FILE) if SEARCH_TOWER_FILE in manifest["files"] else None
        bundle = cls._checked(
            manifest,
            model,
            table,
            items,
            source,
            files[ITEMS_FILE],
            text_index=text_index,
            search_tower=tower,
        )
        if verify:
            bundle.verify()
        return bundle

    @classmethod
    def from_parts(
        cls,
        manifest: Mapping[str, Any],
        model: bytes,
        table: ItemTable,
        items: Sequence[Mapping[str, Any]],
        *,
        verify: bool = True,
        search_tower: bytes | None = None,
    ) -> Bundle:
        """The bundle ``manifest`` describes, from its parts already in memory.

        The files are serialised as `save` writes them and each must match the manifest's
        sha256 (e.g. a catalog rebuilt from synced rows against the signed manifest); a
        text index the manifest lists is rebuilt from ``items``. A search tower the
        manifest lists comes from ``search_tower`` (the sync downloads it with the user
        tower when the signed model record names it); without it (a model version
        published before the sync shipped search towers) the bundle is built without it,
        so search falls back to the user vector.

        Raises:
            BundleError: if a digest, the manifest or (with ``verify``) the golden
                self-check fails.
        """
        document = _parse_manifest(_json_bytes(dict(manifest)), Path("<parts>"))
        if search_tower is None and SEARCH_TOWER_FILE in document["files"]:
            document = _without_search_tower(document)
        manifest_bytes = _json_bytes(document)
        entry, files = table.to_files()
        if document["table"] != entry:
            raise BundleError(
                f"the manifest's table entry {document['table']!r} is not the table's {entry!r}"
            )
        plain_items = [dict(item) for item in items]
        files[ITEMS_FILE] = _items_bytes(plain_items)
        files[document["model"]["file"]] = bytes(model)
        if TEXT_INDEX_FILE in document["files"]:
            settings = _search_settings(document)
            files[TEXT_INDEX_FILE] = TextIndex.build(plain_items, settings.text).to_bytes()
        if search_tower is not None:
            files[SEARCH_TOWER_FILE] = bytes(search_tower)
        files[MANIFEST_FILE] = manifest_bytes
        return cls.from_files(files, verify=verify, source="<parts>")

    @classmethod
    def from_bytes(cls, data: bytes, *, verify: bool = True) -> Bundle:
        """A bundle from the tar archive `to_bytes` writes (e.g. received over a network).

        Raises:
            BundleError: if ``data`` is not such an archive, or a check fails.
        """
        files: dict[str, bytes] = {}
        try:
            with tarfile.open(fileobj=io.BytesIO(bytes(data)), mode="r:") as archive:
                for member in archive.getmembers():
                    if not member.isfile() or not _plain_name(member.name):
                        raise BundleError(
                            f"bundle archive member {member.name!r} is not a plain file at the "
                            "top level; archives come from Bundle.to_bytes"
                        )
                    if member.name in files:
                        raise BundleError(f"bundle archive holds {member.name!r} twice")
                    extracted = archive.extractfile(member)
                    assert extracted is not None  # a regular file always extracts
                    files[member.name] = extracted.read()
        except tarfile.TarError as exc:
            raise BundleError(
                f"not a bundle archive ({exc}); make one with Bundle.to_bytes"
            ) from exc
        return cls.from_files(files, verify=verify, source="<archive>")

    # -- writing ---------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
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
        search: SearchSettings | None = None,
        text_index: bool = False,
    ) -> Bundle:
        """A new bundle in memory, with golden outputs recorded by this CPU's runtime.

        Args:
            model: the user tower ``.tflite`` bytes (the contract of
                `pocketrec.sdk.contract`).
            table: item vectors; row ``i`` belongs to ``item_ids[i]``.
            item_ids: external item ids, unique non-empty strings, one per table row.
            history_length: ``L`` of the model's history input.
            items_metadata: per item a JSON-able dict (e.g. ``title``, ``genres``), or None.
            model_version: free text; default ``"sha256-"`` + the model's first 12 hex digits.
            metrics: free-form JSON-able numbers (numpy scalars and arrays are converted).
            recipe: the compression recipe that made it.
            quantization: how the model was quantized, one of
                `pocketrec.sdk.contract.QUANTIZATIONS`; picks the golden tolerance.
            accelerator: where it is meant to run, one of `pocketrec.sdk.contract.ACCELERATORS`.
            extra: free-form JSON-able data.
            golden_histories: histories of external ids whose outputs are recorded for the
                self-check; default: a few picked deterministically (one empty).
            search: search settings for the manifest; default: none recorded, so
                `search_settings` gives the SDK's defaults.
            text_index: also write ``text_index.bin``, the search index of the items'
                text (about 1.5 s per 100k items to build); without it the device builds
                it on the first search.

        Raises:
            ValueError: for inconsistent arguments.
            BundleError: if the model does not follow the user tower contract.
        """
        check_choice(quantization, QUANTIZATIONS, "quantization")
        check_choice(accelerator, ACCELERATORS, "accelerator")
        items = _items_document(item_ids, items_metadata, table.num_items)
        ids = [item["id"] for item in items]
        model = bytes(model)
        tower = UserTower(model, history_length=history_length, dim=table.dim)
        if golden_histories is None:
            golden_histories = _default_golden_histories(ids, history_length)
        golden = _golden(tower, table, ids, golden_histories)
        digest = hashlib.sha256(model).hexdigest()
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "model_version": model_version
            if model_version is not None
            else f"sha256-{digest[:12]}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "item_count": table.num_items,
            "embedding_dim": table.dim,
            "history_length": int(history_length),
            "model": _model_entry(model, history_length, table.dim, quantization, accelerator),
            "table": {},
            "recipe": str(recipe),
            "metrics": _jsonable(dict(metrics or {})),
            "files": {},
            "golden": golden,
            "extra": _jsonable(dict(extra or {})),
        }
        if search is not None or text_index:
            manifest["search"] = (search or SearchSettings()).to_dict()
        return cls._assembled(manifest, model, table, items, text_index=text_index)

    def with_metrics(self, metrics: Mapping[str, Any]) -> Bundle:
        """The same bundle with ``metrics`` in its manifest (e.g. once it was evaluated)."""
        return self._with_manifest_field("metrics", metrics)

    def with_extra(self, extra: Mapping[str, Any]) -> Bundle:
        """The same bundle with ``extra`` in its manifest (free-form, e.g. sync versions)."""
        return self._with_manifest_field("extra", extra)

    def _with_manifest_field(self, key: str, value: Mapping[str, Any]) -> Bundle:
        # A free-form manifest field changes no file: every digest stays valid.
        manifest = copy.deepcopy(self._manifest)
        manifest[key] = _jsonable(dict(value))
        return self._replaced(
            manifest, text_index=self._text_index, search_tower=self._search_tower
        )

    def _replaced(
        self, manifest: dict[str, Any], *, text_index: bytes | None, search_tower: bytes | None
    ) -> Bundle:
        """This bundle's model, table and items under ``manifest``, with these optional files."""
        return Bundle(
            manifest,
            self._model,
            self._table,
            self._items,
            source=self._source,
            items_json=self._items_json,
            text_index=text_index,
            search_tower=search_tower,
        )

    def with_items(
        self,
        table: ItemTable,
        item_ids: Sequence[str],
        items_metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> Bundle:
        """The same model with another item table: a new catalog in the same embedding space.

        Golden outputs are recorded again (history vectors come from the table); the
        search settings are kept, a text index is rebuilt for the new items if this
        bundle has one, and a search tower is kept (it reads user vectors, not items).

        Raises:
            ValueError: if the table's dimension is not the model's, or ids are bad.
        """
        if table.dim != self.embedding_dim:
            raise ValueError(
                f"the model reads {self.embedding_dim}-d item vectors; got a table of dim "
                f"{table.dim}. A table from another model needs that model's bundle"
            )
        model = self._manifest["model"]
        bundle = Bundle.build(
            model=self._model,
            table=table,
            item_ids=item_ids,
            history_length=self.history_length,
            items_metadata=items_metadata,
            model_version=self.model_version,
            metrics={},
            recipe=self._manifest["recipe"],
            quantization=model["quantization"],
            accelerator=model["accelerator"],
            extra=self._manifest["extra"],
            search=self.search_settings if "search" in self._manifest else None,
            text_index=self._text_index is not None,
        )
        tower = self.search_tower_settings
        if tower is None or self._search_tower is None:
            return bundle
        return bundle.with_search_tower(
            self._search_tower,
            tower.encoding,
            quantization=tower.quantization,
            golden_queries=tower.golden["queries"],
        )

    def with_search(
        self, settings: SearchSettings | None = None, *, text_index: bool | None = None
    ) -> Bundle:
        """The same bundle with other search settings and/or with or without a text index.

        Args:
            settings: recorded in the manifest; None keeps the current ones.
            text_index: ship ``text_index.bin`` (built, or rebuilt when the tokenizer
                settings change) or not; None keeps whether it ships.
        """
        settings = self.search_settings if settings is None else settings
        if not isinstance(settings, SearchSettings):
            raise TypeError(f"settings must be a SearchSettings, got {type(settings).__name__}")
        ship = self._text_index is not None if text_index is None else text_index
        index = None
        if ship:
            index = self._text_index
            if index is None or settings.text != self.search_settings.text:
                index = TextIndex.build(self._items, settings.text).to_bytes()
        manifest = copy.deepcopy(self._manifest)
        tower = manifest.get("search", {}).get("tower")
        manifest["search"] = settings.to_dict()
        if tower is not None:
            manifest["search"]["tower"] = tower
        files = dict(manifest["files"])
        files.pop(TEXT_INDEX_FILE, None)
        if index is not None:
            files[TEXT_INDEX_FILE] = hashlib.sha256(index).hexdigest()
        manifest["files"] = dict(sorted(files.items()))
        return self._replaced(manifest, text_index=index, search_tower=self._search_tower)

    def with_search_tower(
        self,
        model: bytes | None,
        encoding: QueryEncoding | None = None,
        *,
        quantization: str = "float32",
        golden_queries: Sequence[str] | None = None,
    ) -> Bundle:
        """The same bundle with a search tower (``search_tower.tflite``), or without one.

        Its golden outputs are recorded here, by this CPU's runtime, for the golden
        queries (default: a few made from the items' text) paired with the bundle's golden
        user vectors; `verify` checks them.

        Args:
            model: the search tower ``.tflite`` (`pocketrec.training.search`), or None to
                drop it.
            encoding: the `QueryEncoding` it was trained with (required with a model).
            quantization: how it was converted, one of ``SEARCH_TOWER_QUANTIZATIONS``.

        Raises:
            ValueError: for a model without an encoding or an unknown quantization.
            BundleError: if the model does not have the search tower's signature.
        """
        manifest = copy.deepcopy(self._manifest)
        files = dict(manifest["files"])
        files.pop(SEARCH_TOWER_FILE, None)
        search = dict(manifest.get("search", SearchSettings().to_dict()))
        search.pop("tower", None)
        if model is not None:
            if not isinstance(encoding, QueryEncoding):
                raise ValueError("a search tower needs the QueryEncoding it was trained with")
            if quantization not in SEARCH_TOWER_QUANTIZATIONS:
                raise ValueError(
                    f"quantization must be one of {', '.join(SEARCH_TOWER_QUANTIZATIONS)}; "
                    f"got {quantization!r}"
                )
            model = bytes(model)
            tower = SearchTower(model, encoding, self.embedding_dim)
            queries = list(golden_queries or _default_golden_queries(self._items))
            users = np.asarray(manifest["golden"]["user_vectors"], np.float32)
            paired = users[np.arange(len(queries)) % len(users)]
            golden = {
                "queries": queries,
                "user_vectors": paired.tolist(),
                "search_vectors": tower.vectors(queries, paired).tolist(),
            }
            search["tower"] = SearchTowerSettings(encoding, quantization, golden).to_dict()
            files[SEARCH_TOWER_FILE] = hashlib.sha256(model).hexdigest()
        manifest["search"] = search
        manifest["files"] = dict(sorted(files.items()))
        return self._replaced(manifest, text_index=self._text_index, search_tower=model)

    def files(self) -> dict[str, bytes]:
        """Every file of the bundle, ``manifest.json`` included: ``{file name: bytes}``."""
        _, contents = self._table.to_files()
        contents[self._manifest["model"]["file"]] = self._model
        contents[ITEMS_FILE] = self._items_file()
        if self._text_index is not None:
            contents[TEXT_INDEX_FILE] = self._text_index
        if self._search_tower is not None:
            contents[SEARCH_TOWER_FILE] = self._search_tower
        contents[MANIFEST_FILE] = _json_bytes(self._manifest)
        return contents

    def _items_file(self) -> bytes:
        # Serialised once: for a large catalog it is the slowest file to write.
        if self._items_json is None:
            self._items_json = _items_bytes(self._items)
        return self._items_json

    def to_bytes(self) -> bytes:
        """The bundle as one uncompressed tar archive of its files (`from_bytes` reads it).

        Deterministic: the same bundle always gives the same bytes.
        """
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
            for name, data in sorted(self.files().items()):
                info = tarfile.TarInfo(name)
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    def save(self, path: str | Path) -> Path:
        """Writes the bundle to ``path`` without a moment when ``path`` is not a bundle.

        The files go into a new version directory beside ``path``
        (``.NAME.versions/VERSION``); then ``path``, a symbolic link, is replaced by one to
        the new version in one ``rename``. Readers see the old bundle or the new one,
        never neither nor a mix; the previous version is kept until the next save, so a
        reader that opened it a moment ago can finish. A plain bundle directory at ``path``
        (written by an older pocketrec) or an empty one is replaced once, non-atomically.

        Returns:
            ``path``.

        Raises:
            ValueError: if ``path`` holds something that is not a bundle.
            OSError: if the files cannot be written; ``path`` is left as it was.
        """
        out = Path(path)
        if out.exists() and not out.is_symlink() and not _replaceable(out):
            raise ValueError(
                f"{out} exists and is not a bundle (no {MANIFEST_FILE}); refusing to overwrite "
                "it. Pick an empty or new directory."
            )
        versions = out.parent / f".{out.name}.versions"
        versions.mkdir(parents=True, exist_ok=True)
        files = self.files()
        version = _version_name(files[MANIFEST_FILE])
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=versions))
        try:
            tmp.chmod(0o755)
            for name, data in files.items():
                _write_synced(tmp / name, data)
            target = versions / version
            os.replace(tmp, target)
            _sync_directory(versions)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        previous = _current_version(out)
        _point(out, Path(versions.name) / version)
        _prune(versions, keep={version, *([previous] if previous else [])})
        return out

    # -- contents --------------------------------------------------------------------------

    def verify(self) -> None:
        """Runs the golden self-check on this CPU (see docs/bundle-format.md, Verification):
        the user tower and the table, and the search tower when the bundle has one.

        Raises:
            BundleError: if a model or the table does not reproduce the golden outputs.
        """
        tower = UserTower(self._model, history_length=self.history_length, dim=self.embedding_dim)
        check_golden(self, tower)
        settings = self.search_tower_settings
        if settings is not None and self._search_tower is not None:
            search_tower = SearchTower(self._search_tower, settings.encoding, self.embedding_dim)
            search_tower.check_golden(settings, self._source)

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json`` (a copy)."""
        return copy.deepcopy(self._manifest)

    @property
    def model(self) -> bytes:
        """The user tower's ``.tflite`` bytes."""
        return self._model

    @property
    def table(self) -> ItemTable:
        """The item table as stored (memory-mapped when opened with ``mmap``)."""
        return self._table

    @property
    def item_ids(self) -> tuple[str, ...]:
        """External item ids; row ``i`` of the table is ``item_ids[i]``."""
        return self._item_ids

    @property
    def items(self) -> list[dict[str, Any]]:
        """Per table row, ``{"id": ..., **metadata}`` (copies)."""
        return [dict(item) for item in self._items]

    @property
    def search_settings(self) -> SearchSettings:
        """The manifest's search settings, or the defaults when it records none."""
        return _search_settings(self._manifest)

    @property
    def text_index(self) -> bytes | None:
        """``text_index.bin`` as shipped, or None when the bundle has none (see
        `pocketrec.sdk.search`; the device then builds the index from the items)."""
        return self._text_index

    @property
    def search_tower(self) -> bytes | None:
        """``search_tower.tflite`` as shipped, or None (search then mixes in the user vector)."""
        return self._search_tower

    @property
    def search_tower_settings(self) -> SearchTowerSettings | None:
        """The manifest's ``search.tower`` entry, or None when the bundle has no tower."""
        return _tower_settings(self._manifest)

    @property
    def source(self) -> str:
        """Where the bundle came from: its version directory, ``<memory>`` or ``<archive>``."""
        return self._source

    @property
    def model_version(self) -> str:
        return str(self._manifest["model_version"])

    @property
    def model_sha256(self) -> str:
        """sha256 hex digest of the model bytes."""
        return str(self._manifest["files"][self._manifest["model"]["file"]])

    @property
    def quantization(self) -> str:
        return str(self._manifest["model"]["quantization"])

    @property
    def sync_family(self) -> str | None:
        """The family a sync server published this bundle in (``extra.sync``), or None."""
        family = self._manifest["extra"].get("sync", {}).get("family")
        return family if isinstance(family, str) else None

    @property
    def sync_versions(self) -> tuple[int, int]:
        """``(model_version, catalog_version)`` as the sync numbered this bundle; ``(0, 0)``
        for a bundle that did not come from a sync server."""
        sync = self._manifest["extra"].get("sync", {})
        return int(sync.get("model_version", 0)), int(sync.get("catalog_version", 0))

    @property
    def history_length(self) -> int:
        """``L``, how many of the most recent history items the model reads."""
        return int(self._manifest["history_length"])

    @property
    def embedding_dim(self) -> int:
        """``D``, the dimension of item and user vectors."""
        return int(self._manifest["embedding_dim"])

    def sizes(self) -> dict[str, dict[str, int]]:
        """Raw and gzip (level 9, per file, summed) bytes of the model, table and all files."""
        table_files = set(self._manifest["table"]["files"].values())
        sizes = {part: {"raw": 0, "gzip": 0} for part in ("model", "table", "total")}
        for name, data in self.files().items():
            raw, packed = len(data), len(gzip.compress(data, compresslevel=9, mtime=0))
            parts = ["total"]
            if name == self._manifest["model"]["file"]:
                parts.append("model")
            if name in table_files:
                parts.append("table")
            for part in parts:
                sizes[part]["raw"] += raw
                sizes[part]["gzip"] += packed
        return sizes

    def __repr__(self) -> str:
        return (
            f"Bundle(model_version={self.model_version!r}, items={self._table.num_items}, "
            f"quantization={self.quantization!r}, table={self._table.dtype!r}, "
            f"source={self._source!r})"
        )

    # -- internals -------------------------------------------------------------------------

    @classmethod
    def _assembled(
        cls,
        manifest: dict[str, Any],
        model: bytes,
        table: ItemTable,
        items: list[dict[str, Any]],
        *,
        text_index: bool = False,
    ) -> Bundle:
        """Fills the manifest's table entry and checksums from the files' contents."""
        entry, contents = table.to_files()
        contents[MODEL_FILE] = model
        contents[ITEMS_FILE] = _items_bytes(items)
        if text_index:
            settings = _search_settings(manifest)
            contents[TEXT_INDEX_FILE] = TextIndex.build(items, settings.text).to_bytes()
        manifest["table"] = entry
        manifest["files"] = {
            name: hashlib.sha256(data).hexdigest() for name, data in sorted(contents.items())
        }
        return cls(
            manifest,
            model,
            table,
            items,
            source="<memory>",
            items_json=contents[ITEMS_FILE],
            text_index=contents.get(TEXT_INDEX_FILE),
        )

    @classmethod
    def _checked(
        cls,
        manifest: dict[str, Any],
        model: bytes,
        table: ItemTable,
        items: list[dict[str, Any]],
        source: str,
        items_json: bytes | None = None,
        *,
        text_index: bytes | None = None,
        search_tower: bytes | None = None,
    ) -> Bundle:
        """Cross-checks parsed parts: table and items against the manifest's counts."""
        count, dim = manifest["item_count"], manifest["embedding_dim"]
        if (table.num_items, table.dim) != (count, dim):
            raise BundleError(
                f"{source}: manifest says {count} items of dim {dim}, the item table holds "
                f"{table.num_items} of dim {table.dim}"
            )
        if len(items) != count:
            raise BundleError(
                f"{source}: {ITEMS_FILE} holds {len(items)} items, the manifest says {count}"
            )
        return cls(
            manifest,
            model,
            table,
            items,
            source=source,
            items_json=items_json,
            text_index=text_index,
            search_tower=search_tower,
        )


def write_bundle(out_dir: str | Path, **parts: Any) -> Path:
    """``Bundle.build(**parts).save(out_dir)``: builds a bundle and writes it atomically.

    Returns:
        ``out_dir``.
    """
    return Bundle.build(**parts).save(out_dir)


def read_manifest(bundle_dir: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a bundle directory, with its fields checked.

    Raises:
        BundleError: if the manifest is missing, not JSON, or lacks required fields.
    """
    directory = Path(bundle_dir)
    if not (directory / MANIFEST_FILE).is_file():
        raise BundleError(
            f"{directory / MANIFEST_FILE} does not exist; {directory} is not a bundle"
        )
    return _parse_manifest(_read_file(directory / MANIFEST_FILE), directory)


def verify_bundle(bundle_dir: str | Path) -> dict[str, Any]:
    """Checks a bundle directory completely (`Bundle.open` with ``verify``); its manifest.

    Raises:
        BundleError: naming the first check that failed.
    """
    return Bundle.open(bundle_dir, verify=True).manifest


def bundle_size(bundle_dir: str | Path) -> dict[str, dict[str, int]]:
    """`Bundle.sizes` of a bundle directory."""
    return Bundle.open(bundle_dir, verify=False).sizes()


def check_golden(bundle: Bundle, tower: UserTower, *, tolerance: float | None = None) -> None:
    """Runs ``tower`` on the golden histories and compares with the recorded outputs.

    The user vectors must match within ``tolerance`` (default: `GOLDEN_TOLERANCE` of the
    model's quantization); the top-k of every golden history is recomputed over the whole
    table from the recorded user vectors and must be the recorded one, so no table row
    can be changed to rank where it did not.

    Raises:
        BundleError: naming what differs.
    """
    manifest = bundle._manifest
    where = bundle.source
    golden = manifest["golden"]
    try:
        histories = [[str(i) for i in h] for h in golden["histories"]]
        expected = np.asarray(golden["user_vectors"], dtype=np.float32)
        top_ids = [[str(i) for i in t["item_ids"]] for t in golden["top_k"]]
        top_scores = [np.asarray(t["scores"], dtype=np.float32) for t in golden["top_k"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(
            f"{where}: golden must hold histories, user_vectors and top_k (item_ids, scores): {exc}"
        ) from exc
    table = bundle.table
    if (
        not histories
        or expected.shape != (len(histories), table.dim)
        or len(top_ids) != len(histories)
    ):
        raise BundleError(
            f"{where}: golden holds {len(histories)} histories, {len(top_ids)} top_k lists and "
            f"user_vectors of shape {list(expected.shape)}; expected user_vectors "
            f"[{len(histories)}, {table.dim}]"
        )
    row_of = {item_id: row for row, item_id in enumerate(bundle.item_ids)}
    rows = [_rows(h, row_of, "golden history") for h in histories]
    history, mask = encode_histories(table, rows, bundle.history_length)
    quantization = bundle.quantization
    rtol = GOLDEN_TOLERANCE[quantization] if tolerance is None else tolerance
    actual = tower.run(history, mask)
    _compare(actual, expected, rtol, f"user vectors ({quantization} model)", where)
    scores = table.scores(expected)
    k = min(GOLDEN_K, table.num_items)
    for b, (ids, want) in enumerate(zip(top_ids, top_scores, strict=True)):
        recorded = _rows(ids, row_of, "golden top_k")
        if len(recorded) != k or want.shape != (k,):
            raise BundleError(f"{where}: golden top_k {b} must list {k} items with their scores")
        _compare(scores[b, recorded], want, _TABLE_TOLERANCE, f"top-k scores of history {b}", where)
        best = top_k(scores[b], k)
        # The recomputed top-k must score like the recorded one, rank by rank; an item that
        # changed places only with an equal score (a tie) passes.
        _compare(scores[b, best], want, _TABLE_TOLERANCE, f"top-k ranking of history {b}", where)


def _compare(actual: np.ndarray, expected: np.ndarray, rtol: float, what: str, where: str) -> None:
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
    histories = [[str(i) for i in h] for h in histories]
    if not histories:
        raise ValueError("golden_histories must hold at least one history (it may be empty)")
    row_of = {item_id: row for row, item_id in enumerate(item_ids)}
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


def _model_entry(
    model: bytes, history_length: int, dim: int, quantization: str, accelerator: str
) -> dict[str, Any]:
    return {
        "file": MODEL_FILE,
        "signature": SIGNATURE_KEY,
        "inputs": {
            HISTORY_INPUT: {"dtype": "float32", "shape": [-1, history_length, dim]},
            MASK_INPUT: {"dtype": "float32", "shape": [-1, history_length]},
        },
        "outputs": {USER_VECTOR_OUTPUT: {"dtype": "float32", "shape": [-1, dim]}},
        "quantization": quantization,
        "accelerator": accelerator,
        "ops": model_op_types(model),
    }


def _parse_manifest(data: bytes, directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = json.loads(data.decode("utf-8"))
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
    if model.get("quantization") not in QUANTIZATIONS:
        raise BundleError(
            f"{path}: model quantization must be one of {', '.join(QUANTIZATIONS)}, found "
            f"{model.get('quantization')!r}; the SDK has no golden tolerance for it"
        )
    files = manifest["files"]
    for name, digest in files.items():
        if not _plain_name(name) or name == MANIFEST_FILE or not isinstance(digest, str):
            raise BundleError(
                f"{path}: files must map plain file names to sha256 digests, found {name!r}"
            )
    table_files = manifest["table"].get("files")
    if not isinstance(table_files, dict) or not all(
        isinstance(f, str) for f in table_files.values()
    ):
        raise BundleError(f"{path}: table entry must map roles to files, found {table_files!r}")
    unlisted = [n for n in (model["file"], ITEMS_FILE, *table_files.values()) if n not in files]
    if unlisted:
        raise BundleError(
            f"{path}: manifest 'files' must list {unlisted} with their sha256; rewrite the bundle"
        )
    try:
        _search_settings(manifest)
        tower = _tower_settings(manifest)
    except (TypeError, ValueError) as exc:
        raise BundleError(
            f"{path}: manifest 'search' is not valid search settings ({exc}); rewrite it with "
            "Bundle.with_search"
        ) from exc
    if (tower is None) != (SEARCH_TOWER_FILE not in files):
        raise BundleError(
            f"{path}: manifest 'search.tower' and the file {SEARCH_TOWER_FILE} come together; "
            "rewrite the bundle with Bundle.with_search_tower"
        )
    return manifest


def _search_settings(manifest: Mapping[str, Any]) -> SearchSettings:
    """The manifest's optional ``search`` field (defaults when absent)."""
    if "search" not in manifest:
        return SearchSettings()
    return SearchSettings.from_dict(manifest["search"])


def _tower_settings(manifest: Mapping[str, Any]) -> SearchTowerSettings | None:
    """The manifest's optional ``search.tower`` entry."""
    search = manifest.get("search")
    if not isinstance(search, Mapping) or "tower" not in search:
        return None
    return SearchTowerSettings.from_dict(search["tower"])


def _without_search_tower(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` without its search tower entry and file."""
    document = copy.deepcopy(dict(manifest))
    document["search"].pop("tower", None)
    document["files"].pop(SEARCH_TOWER_FILE, None)
    return document


def _default_golden_queries(items: Sequence[Mapping[str, Any]]) -> list[str]:
    """A blank query, the first item's text, a word of another, and that word cut short."""
    texts = [item_text(item) for item in items[:: max(1, len(items) // 7)]][:3]
    found = [w for text in texts[1:] for w in words(text) if len(w) >= 4][:1]
    return ["", texts[0] if texts else "", *found, *(w[:-1] for w in found)]


def _parse_items(data: bytes, path: Path) -> list[dict[str, Any]]:
    try:
        items = json.loads(data.decode("utf-8"))["items"]
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and isinstance(item["id"], str) for item in items
        ):
            raise TypeError("every item must be an object with a string 'id'")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{path} must be {{'items': [{{'id': str, ...}}, ...]}}: {exc}; rewrite the bundle"
        ) from exc
    ids = [item["id"] for item in items]
    if len(set(ids)) != len(ids):
        raise BundleError(f"{path}: item ids must be unique; rewrite the bundle")
    return items


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
    item_ids: Sequence[str],
    items_metadata: Sequence[Mapping[str, Any]] | None,
    num_rows: int,
) -> list[dict[str, Any]]:
    ids = checked_item_ids(item_ids, "item_ids")
    if len(ids) != num_rows:
        raise ValueError(f"got {len(ids)} item ids for a table of {num_rows} rows")
    if not ids:
        raise ValueError("a bundle needs at least one item")
    if len(set(ids)) != len(ids):
        raise ValueError("item ids must be unique")
    if items_metadata is None:
        return [{"id": i} for i in ids]
    if len(items_metadata) != len(ids):
        raise ValueError(
            f"got {len(items_metadata)} items_metadata entries for {len(ids)} item ids"
        )
    items = []
    for item_id, meta in zip(ids, items_metadata, strict=True):
        if not isinstance(meta, Mapping) or "id" in meta:
            raise ValueError(f"metadata of item {item_id!r} must be a dict without 'id': {meta!r}")
        if all(_plain_json(value) for value in meta.values()):
            # Lists copied: the bundle must not change when the caller's metadata does.
            copied = {k: list(v) if isinstance(v, list) else v for k, v in meta.items()}
            items.append({"id": item_id, **copied})
        else:
            items.append({"id": item_id, **_jsonable(dict(meta))})
    return items


def _plain_json(value: Any) -> bool:
    """Whether ``value`` is JSON as it is (the common metadata: str, finite numbers, lists of
    str): checked without rebuilding it, which `_jsonable` would do for 1M items."""
    if isinstance(value, str | bool | int) or value is None:
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


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


def _items_bytes(items: Sequence[dict[str, Any]]) -> bytes:
    """``items.json``: compact, as catalogs of a million items are written and hashed often."""
    document = {"items": list(items)}
    return (json.dumps(document, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, allow_nan=False) + "\n").encode("utf-8")


def _plain_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and Path(name).name == name


def _required_file(files: Mapping[str, bytes], name: str, source: str) -> bytes:
    if name not in files:
        raise BundleError(f"{source}: file {name} is missing; the bundle is incomplete")
    return bytes(files[name])


def _check_digest(found: str, expected: str, path: Path) -> None:
    if found != expected:
        raise BundleError(
            f"{path}: sha256 {found} does not match the manifest's {expected}; the bundle is "
            "corrupt, copy it again"
        )


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise BundleError(f"{path} does not exist; the bundle is incomplete") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


# -- the versioned directory layout of `Bundle.save` ------------------------------------------


def _replaceable(out: Path) -> bool:
    if not out.is_dir():
        return False
    return (out / MANIFEST_FILE).is_file() or not any(out.iterdir())


def _version_name(manifest: bytes) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
    return f"{stamp}-{hashlib.sha256(manifest).hexdigest()[:12]}-{uuid.uuid4().hex[:6]}"


def _current_version(out: Path) -> str | None:
    """The version directory name ``out`` links to now, if it is a link."""
    return Path(os.readlink(out)).name if out.is_symlink() else None


def _point(out: Path, target: Path) -> None:
    """Makes ``out`` a link to ``target`` (relative to ``out.parent``) in one rename."""
    link = out.parent / f".{out.name}.link-{uuid.uuid4().hex}"
    os.symlink(target, link)
    try:
        if out.is_dir() and not out.is_symlink():
            # A plain bundle directory cannot be renamed over: the one non-atomic step,
            # taken once when a bundle written by an older pocketrec is first replaced.
            shutil.rmtree(out)
        os.replace(link, out)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    _sync_directory(out.parent)


def _prune(versions: Path, keep: set[str]) -> None:
    """Deletes every version directory (and stale temporary) but those in ``keep``.

    `Bundle.save` keeps the new version and the one before it, which a reader that
    resolved the link a moment ago may still be reading.
    """
    for path in versions.iterdir():
        if path.name not in keep:
            shutil.rmtree(path, ignore_errors=True)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _sync_directory(directory: Path) -> None:
    """Makes renames in ``directory`` durable (where the platform allows opening one)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
