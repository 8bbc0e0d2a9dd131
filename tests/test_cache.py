"""cache.py: keys, round trips, damaged entries, the no-cache and write-only variants."""

import numpy as np

from conftest import raises_param

from wdbound.cache import Cache, NoCache, WriteOnlyCache, cache_key


def test_key_is_stable_and_order_free():
    assert cache_key("a", {"x": 1, "y": 2}) == cache_key("a", {"y": 2, "x": 1})
    assert cache_key("a", 1) != cache_key("a", 2) and len(cache_key("a")) == 32


def test_round_trip_and_damaged_entries(tmp_path):
    cache = Cache(tmp_path)
    key = cache_key("entry")
    assert cache.get(key) is None and cache.load(key, lambda m, a: 1) is None
    cache.put(key, {"n": 3}, {"v": np.arange(4.0)})
    meta, arrays = cache.get(key)
    assert meta == {"n": 3, "key": key} and np.array_equal(arrays["v"], np.arange(4.0))
    assert cache.load(key, lambda m, a: m["n"] * a["v"].sum()) == 18.0
    assert cache.load(key, lambda m, a: a["missing"]) is None  # wrong shape: recomputed, never trusted
    cache.path(key).write_bytes(b"not a zip")
    assert cache.get(key) is None
    other = cache_key("other")
    cache.put(other, {}, {})
    cache.path(other).rename(cache.path(key))  # an entry stored under another key
    assert cache.get(key) is None
    assert not list(tmp_path.rglob("*.tmp*"))


def test_no_cache_and_write_only(tmp_path):
    none = NoCache()
    none.put("k", {}, {"v": np.zeros(1)})
    assert none.get("k") is None
    none.check_writable()
    writer = WriteOnlyCache(tmp_path)
    writer.put("abcd", {}, {"v": np.ones(2)})
    assert writer.get("abcd") is None and Cache(tmp_path).get("abcd") is not None


def test_unwritable_folder_is_refused_up_front(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with raises_param("cache_dir"):
        Cache(blocker / "sub").check_writable()
    Cache(tmp_path / "new" / "deep").check_writable()
    assert not (tmp_path / "new").exists()  # the check creates nothing
