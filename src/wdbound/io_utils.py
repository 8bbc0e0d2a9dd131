"""Atomic file writes: a result is either complete on disk or absent."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import WdboundError


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` on success.

    On any exception (Ctrl-C included) the temporary file is removed and
    ``path`` is left as it was. The file gets the usual mode under the umask (0644 under 022), not
    mkstemp's 0600. Missing parent folders are created. In a multi-process run only rank 0 writes: the
    other ranks write to a scratch file that is thrown away.
    """
    from .distributed import is_main

    if not is_main():
        fd, tmp = tempfile.mkstemp(prefix="wdbound-rank-", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return
    target = Path(path)
    check_output(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise WdboundError(f"cannot write {target}: {exc.strerror or exc}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates the file 0600 and the mode would survive the rename: give it the usual mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_output(*paths: str | Path | None) -> None:
    """Refuse, before any work, an output path that cannot be written: a parent that is a regular file, a
    folder without write permission, or an existing folder where a file is wanted. Creates nothing; None
    (an output not asked for) passes."""
    for path in paths:
        if path is not None:
            _check_one_output(Path(path))


def _check_one_output(target: Path) -> None:
    """:func:`check_output` of one path."""
    if target.is_dir():
        raise WdboundError(f"cannot write {target}: it is a folder")
    ancestor = target.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise WdboundError(f"cannot write {target}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise WdboundError(f"cannot write {target}: no permission to write in {ancestor}")


def check_output_folder(path: str | Path | None) -> None:
    """Like :func:`check_output` for a folder to be created or filled (``table --out``)."""
    if path is None:
        return
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise WdboundError(f"cannot write into {folder}: it is a file, not a folder")
    check_output(folder / "probe")


def _umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` by calling ``write(tmp)`` on a temporary file beside it, then renaming; returns ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, payload: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(payload, indent=2, allow_nan=True) + "\n")


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
