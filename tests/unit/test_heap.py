"""The process heap and Python's cyclic collector: a service freezes what it holds once started
(service.settle_heap); a rebuild's tuning (projection.fewer_collections) freezes and gives back the heap of
a process that has not, and leaves a settled process's frozen set as it is."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from services.kernel.projection import YOUNG_COLLECTION_EVERY, fewer_collections
from services.kernel.service import settle_heap


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    threshold = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_settling_the_heap_leaves_what_lives_now_out_of_collections(unfrozen: None) -> None:
    held = [object() for _ in range(1000)]
    settle_heap()
    assert gc.get_freeze_count() >= len(held)


def test_a_rebuild_unfreezes_what_it_froze_when_nothing_was_frozen_before(unfrozen: None) -> None:
    threshold = gc.get_threshold()
    with fewer_collections():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == threshold


def test_a_rebuild_in_a_settled_process_leaves_its_frozen_heap_as_it_is(unfrozen: None) -> None:
    settle_heap()
    frozen = gc.get_freeze_count()
    with fewer_collections():
        during = [object() for _ in range(1000)]  # alive during the rebuild: not frozen for good
        assert gc.get_freeze_count() == frozen
        assert gc.get_threshold()[0] == YOUNG_COLLECTION_EVERY
    assert gc.get_freeze_count() == frozen and during
