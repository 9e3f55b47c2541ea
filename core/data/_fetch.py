"""Download of public MovieLens archives into a local cache, checked before use."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pocketrec.errors import DataError

BASE_URL = "https://files.grouplens.org/datasets/movielens/"
# md5 of each archive as published alongside the datasets.
_ARCHIVES = {
    "100k": ("ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "1m": ("ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
}


def default_cache_dir() -> Path:
    """`$POCKETREC_CACHE`, else `~/.cache/pocketrec`."""
    return Path(os.environ.get("POCKETREC_CACHE", Path.home() / ".cache" / "pocketrec"))


def fetch_movielens(
    name: str = "100k",
    cache_dir: str | Path | None = None,
    *,
    base_url: str = BASE_URL,
    timeout: float = 30.0,
) -> Path:
    """Returns the folder of a MovieLens dataset, downloading it once into the cache.

    The archive's checksum is verified before it is unpacked; a cached copy is reused
    without any network access. `base_url` may point at a mirror of GroupLens' folder.

    Raises:
        ValueError: an unknown dataset name.
        DataError: offline, a failed download, or a checksum mismatch.
    """
    if name not in _ARCHIVES:
        raise ValueError(f"unknown MovieLens dataset {name!r}; choose one of {sorted(_ARCHIVES)}")
    archive, md5 = _ARCHIVES[name]
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / archive.removesuffix(".zip")
    if (target / ".verified").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + archive
    with tempfile.TemporaryDirectory(dir=cache) as scratch:
        download = Path(scratch) / archive
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                download.open("wb") as out,
            ):
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, TimeoutError, OSError) as error:
            raise DataError(
                f"could not download {url} ({error}); this machine looks offline. Download it "
                f"elsewhere and pass the unpacked folder with --data, or use --synthetic"
            ) from error
        digest = hashlib.md5(download.read_bytes()).hexdigest()
        if digest != md5:
            raise DataError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {digest}; the download "
                "is corrupt or the file changed upstream, nothing was cached"
            )
        with zipfile.ZipFile(download) as zipped:
            zipped.extractall(scratch)
        unpacked = Path(scratch) / target.name
        (unpacked / ".verified").write_text(md5)
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    return target
