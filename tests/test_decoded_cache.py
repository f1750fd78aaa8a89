"""The decoded-image LRU: bounded bytes, eviction order, read-only entries, fresh in workers."""

import pickle
import threading

import numpy as np
import pytest

from mami_jax.data.decoded_cache import DecodedCache


def arr(value, n=10):
    return np.full(n, value, np.float64)   # 80 bytes


def test_lru_keeps_at_most_the_byte_budget_and_evicts_the_least_recent():
    cache = DecodedCache(max_bytes=200)    # room for two 80-byte arrays
    calls = []

    def make(v):
        return lambda: calls.append(v) or arr(v)

    cache.get_or_compute("a", make(1))
    cache.get_or_compute("b", make(2))
    assert cache.get_or_compute("a", make(99))[0] == 1      # hit: "a" is now the most recent
    cache.get_or_compute("c", make(3))                      # evicts "b", the least recent
    assert len(cache) == 2 and cache.nbytes == 160
    assert cache.get_or_compute("b", make(4))[0] == 4       # recomputed
    assert calls == [1, 2, 3, 4] and (cache.hits, cache.misses) == (1, 4)


def test_entries_are_read_only_and_oversized_ones_are_not_kept():
    cache = DecodedCache(max_bytes=100)
    x = cache.get_or_compute("a", lambda: arr(1))
    with pytest.raises(ValueError, match="read-only"):
        x[0] = 5
    big = cache.get_or_compute("big", lambda: arr(2, n=100))
    assert big[0] == 2 and len(cache) == 1


def test_disabled_cache_always_computes():
    cache = DecodedCache(0)
    out = [cache.get_or_compute("a", lambda: arr(k)) for k in range(3)]
    assert [o[0] for o in out] == [0, 1, 2] and len(cache) == 0
    with pytest.raises(ValueError, match=">= 0"):
        DecodedCache(-1)


def test_pickled_copy_starts_empty_with_the_same_budget():
    cache = DecodedCache(1000)
    cache.get_or_compute("a", lambda: arr(1))
    copy = pickle.loads(pickle.dumps(cache))
    assert copy.max_bytes == 1000 and len(copy) == 0 and copy.nbytes == 0


def test_threads_share_one_budget():
    cache = DecodedCache(80 * 8)
    def work(offset):
        for k in range(50):
            assert cache.get_or_compute(k % 12, lambda: arr(k % 12))[0] == k % 12
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert cache.nbytes <= 640 and len(cache) <= 8
