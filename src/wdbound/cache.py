"""An on-disk cache of spectra and bound ingredients, keyed by checkpoint hash and settings.

Entries are ``.npz`` files of plain arrays plus one JSON string, read with
``allow_pickle=False``: a cache entry can never run code. A missing,
truncated or otherwise unreadable entry is a cache miss and gets rewritten.
Writes are atomic (temp file + rename), so an interrupted run leaves only
complete entries behind.

Location: ``--cache-dir``, else ``$WDBOUND_CACHE_DIR``, else
``$XDG_CACHE_HOME/wdbound``, else ``~/.cache/wdbound``.
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .io_utils import write_atomic

# Bump when an estimator changes what it computes for the same settings: old entries stop matching.
CACHE_VERSION = "wdbound-cache/6"


def default_cache_dir() -> Path:
    """$WDBOUND_CACHE_DIR, else ~/.cache/wdbound."""
    if os.environ.get("WDBOUND_CACHE_DIR"):
        return Path(os.environ["WDBOUND_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wdbound"


def cache_key(*parts) -> str:
    """A stable hash of JSON-serialisable parts (dicts are sorted)."""
    text = json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Cache:
    """``get``/``put`` of named arrays plus a JSON ``meta`` dict under a key."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, key: str) -> Path:
        """The ``.npz`` file of cache entry ``key``."""
        return self.root / key[:2] / f"{key}.npz"

    def check_writable(self) -> None:
        """Refuse up front (one line naming --cache-dir / --no-cache) a cache folder that cannot be written:
        a regular file, or a folder (or its nearest existing ancestor) without write permission. Creates
        nothing."""
        from .errors import WdboundError

        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        reason = None
        if not folder.is_dir():
            reason = f"{folder} is a file, not a folder"
        elif not os.access(folder, os.W_OK | os.X_OK):
            reason = f"no permission to write in {folder}"
        if reason:
            raise WdboundError(f"the cache folder {self.root} is not writable ({reason}); use another cache folder "
                               "or none", "cache_dir")

    def load(self, key: str, build):
        """``build(meta, arrays)`` of the entry under ``key``, or None when it is missing or does not have the
        shape ``build`` expects (a damaged or foreign entry is recomputed, never trusted)."""
        hit = self.get(key)
        if hit is None:
            return None
        try:
            return build(*hit)
        except (KeyError, ValueError, TypeError, IndexError, AttributeError):
            return None

    def get(self, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of entry ``key``, or None when it is missing or unreadable."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            meta = json.loads(str(arrays.pop("__meta__")))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError):
            return None
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        return meta, arrays

    def put(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Store ``meta`` (JSON) and ``arrays`` (plain numpy arrays) under ``key``, atomically."""
        payload = {name: np.asarray(value) for name, value in arrays.items()}
        payload["__meta__"] = np.array(json.dumps({**meta, "key": key}))

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as handle:
                np.savez(handle, **payload)

        write_atomic(self.path(key), write)


class NoCache(Cache):
    """``--no-cache``: never read, never write."""

    def __init__(self) -> None:
        super().__init__(Path(os.devnull))

    def check_writable(self) -> None:
        """Nothing to check: nothing is written."""
        return None

    def get(self, key: str):
        """Always a miss."""
        return None

    def put(self, key: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Store nothing."""
        return None


class WriteOnlyCache(Cache):
    """Writes entries, never reads them (rank 0 of a multi-process run: every rank must compute)."""

    def get(self, key: str):
        """Always a miss (a multi-process run reads no cache)."""
        return None


LAST_SPECTRUM = "last-spectrum.json"


@dataclass(frozen=True)
class LastSpectrum:
    """The most recent ``wdbound spectrum`` run, recorded beside the cache so that ``wdbound err`` without a
    checkpoint evaluates the same checkpoint on the same data: the checkpoint's absolute path, when it ran
    (ISO 8601, UTC), and the options that say which model and which evaluation set (by their option names).

    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> LastSpectrum.read(root) is None
    True
    >>> _ = LastSpectrum("/tmp/a.pt", "2026-12-06T06:00:00+00:00", {"data": "digits", "split": "test"}).write(root)
    >>> LastSpectrum.read(root).options["split"]
    'test'
    """

    checkpoint: str
    when: str
    options: dict = field(default_factory=dict)

    @classmethod
    def now(cls, checkpoint: str | Path, options: dict) -> "LastSpectrum":
        """A record of a run of ``checkpoint`` finishing now."""
        return cls(str(Path(checkpoint).resolve()), datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   dict(options))

    def write(self, root: str | Path) -> Path:
        """Write the record into the cache folder ``root`` (atomically); returns its path."""
        path = Path(root) / LAST_SPECTRUM

        def save(tmp) -> None:
            Path(tmp).write_text(json.dumps(asdict(self), indent=1, default=str))

        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, save)

    @classmethod
    def read(cls, root: str | Path) -> "LastSpectrum | None":
        """The record in cache folder ``root``, or None when there is none or it does not parse."""
        try:
            raw = json.loads((Path(root) / LAST_SPECTRUM).read_text())
            return cls(str(raw["checkpoint"]), str(raw["when"]), dict(raw.get("options") or {}))
        except (OSError, ValueError, KeyError, TypeError):
            return None
