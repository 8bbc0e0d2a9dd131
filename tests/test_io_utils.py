"""Atomic writes: complete or absent, with the usual file mode."""

import os
import stat

import pytest

from wdbound.io_utils import write_json_atomic, write_text_atomic


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_get_the_mode_of_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        path = write_json_atomic(tmp_path / "deep" / "folder" / "out.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode and path.read_text().startswith("{")


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "old")

    class Boom(Exception):
        pass

    from wdbound.io_utils import atomic_path

    with pytest.raises(Boom):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise Boom
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.txt"]
