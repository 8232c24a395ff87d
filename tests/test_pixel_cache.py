"""data.image_cache_mib (distill/pixel_cache.py): cached items equal freshly decoded ones for both views,
the cache stays within its budget dropping the least recently used, and 0 keeps nothing."""

import torch

from distill.data import LlavaDataset
from distill.pixel_cache import PixelCache
from tests.test_data import view


def test_least_recently_used_go_first_and_the_budget_holds():
    cache = PixelCache(3 * 4 / 2**20)  # three float32 values
    one = torch.ones(1)
    cache.put("a", one), cache.put("b", one), cache.put("c", one)
    assert cache.get("a") is one  # "a" is now the most recent
    cache.put("d", one)
    assert cache.get("b") is None and cache.get("a") is one and cache.held == 12
    cache.put("big", torch.ones(4))  # larger than the whole budget: not kept, nothing dropped
    assert cache.get("big") is None and cache.get("c") is one
    off = PixelCache(0)
    off.put("a", one)
    assert off.get("a") is None and off.held == 0


def test_cached_items_equal_fresh_ones_for_both_views(shapes, tokenizer):
    views = {"student": view(tokenizer), "teacher": view(tokenizer, image_size=64)}
    fresh = LlavaDataset(shapes / "train.json", views, progress=False)
    cached = LlavaDataset(shapes / "train.json", views, progress=False, image_cache_mib=64)
    with_image = [i for i in range(len(fresh)) if fresh.examples[i][3] is not None][:6]
    for _ in range(2):  # the second round is served from the cache
        for i in with_image:
            expected, got = fresh[i], cached[i]
            assert expected.keys() == got.keys()
            for key in expected:
                assert torch.equal(expected[key], got[key]), key
    assert cached.pixel_cache.hits >= 2 * len(with_image) and fresh.pixel_cache.hits == 0
    assert cached.pixel_cache.held == sum(t.nbytes for t in cached.pixel_cache.entries.values()) > 0
