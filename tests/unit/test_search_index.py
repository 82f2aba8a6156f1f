"""The search index kept up to date from the feature store's catalogue change log: BM25Index.updated
equals a rebuild, and CatalogueRefresher reads the whole catalogue once, then only what changed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from services.inference.search import BM25Index, CatalogueRefresher

ITEMS = [
    {"item_id": "a", "title": "Red running shoes", "category": "footwear", "price": 50.0},
    {"item_id": "b", "title": "Blue running jacket", "category": "outerwear", "price": 80.0},
    {"item_id": "c", "title": "Red red scarf", "category": "accessories", "price": 9.5},
    {"item_id": "d", "title": "Leather boots", "category": "footwear", "price": 120.0},
]
QUERIES = ["red", "running", "footwear", "wool scarf", "blue red shoes", "leather", "green hat", "boots footwear"]


def _results(idx: BM25Index) -> dict:
    return {q: idx.search(q, 10) for q in QUERIES}


def test_updated_index_searches_like_a_rebuild_and_leaves_the_old_one_alone():
    old = BM25Index.build(ITEMS)
    before = _results(old)
    changes = [{"item_id": "c", "title": "Green wool scarf", "category": "accessories", "price": 12.0},  # retitled
               {"item_id": "e", "title": "Green hat", "category": "accessories", "price": 15.0},  # new
               {"item_id": "d", "title": "Leather boots", "category": "shoes", "price": 99.0},  # recategorised
               {"item_id": "e", "title": "ignored: the first of repeated ids wins", "category": ""}]
    new = old.updated(changes)
    rebuilt = BM25Index.build([*changes[:3], *[it for it in ITEMS if it["item_id"] not in ("c", "d")]])
    for q in QUERIES:
        got, want = new.search(q, 10), rebuilt.search(q, 10)
        assert [i for i, _ in got] == [i for i, _ in want], q
        assert [s for _, s in got] == pytest.approx([s for _, s in want]), q
    assert len(new) == 5 and new.meta["c"]["title"] == "Green wool scarf" and new.meta["d"]["price"] == 99.0
    assert "footwear" in new.postings and [d for d, _ in new.postings["footwear"]] == [new.doc_of["a"]]
    assert "leather" in new.postings and "red" in new.postings and "green" in new.postings
    assert _results(old) == before and len(old) == 4 and old.meta["c"]["title"] == "Red red scarf"
    gone = old.updated([{"item_id": "c", "title": "Plain", "category": "accessories"}])
    assert "scarf" not in gone.postings and "scarf" in old.postings  # a term no document has any more


class _Store:
    """The feature read API's catalogue calls over a dict, counting full reads."""

    def __init__(self, items):
        self.items = {it["item_id"]: {k: it[k] for k in ("title", "category", "price")} for it in items}
        self.versions = dict.fromkeys(self.items, 1)
        self.version = 1
        self.full_reads = 0

    def change(self, item_id, **meta):
        self.version += 1
        self.items.setdefault(item_id, {"title": "", "category": "", "price": 0.0}).update(meta)
        self.versions[item_id] = self.version

    def catalogue_version(self):
        return self.version

    def catalogue(self):
        self.full_reads += 1
        return {i: dict(m) for i, m in self.items.items()}

    def catalogue_changes(self, since):
        if self.version < since:
            return None
        return self.version, {i: dict(self.items[i]) for i, v in self.versions.items() if v > since}

    def close(self):
        pass


def test_refresher_reads_the_whole_catalogue_once_then_only_changes():
    store = _Store(ITEMS)
    service = SimpleNamespace(index=BM25Index())
    ref = CatalogueRefresher(service, "redis://unused", "p:", 60.0)
    ref._client = store
    assert ref.refresh() == 4 and store.full_reads == 1 and len(service.index) == 4
    first = service.index
    assert ref.refresh() == 0 and service.index is first  # nothing changed: the same index, no rebuild
    store.change("c", title="Green wool scarf")
    store.change("e", title="Green hat", category="accessories", price=15.0)
    assert ref.refresh() == 2 and store.full_reads == 1
    assert [i for i, _ in service.index.search("green", 10)] == ["e", "c"] and len(service.index) == 5
    assert first.search("green", 10) == []  # the index a running search holds is never changed
    store.version = 0  # the store was flushed: read it whole again
    store.versions = {}
    assert ref.refresh() == 5 and store.full_reads == 2
