"""Text retrieval over the item catalogue: an in-memory BM25 (Okapi) inverted index over item
titles and categories. Search = BM25 top-N, then the same personalised ranking as Recommend.
"""

from __future__ import annotations

import csv
import heapq
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

_TOKEN = re.compile(r"[\w]+", re.UNICODE)


def tokenize(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t]


class BM25Index:
    """Okapi BM25 with the usual k1=1.2, b=0.75. Documents: ``title + " " + category`` per item
    (the category counted twice in the title field's place would overweight it; it is one field)."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.postings: dict[str, list[tuple[int, int]]] = defaultdict(list)  # term -> [(doc, tf)]
        self.doc_ids: list[str] = []
        self.doc_len: list[int] = []
        self.meta: dict[str, dict] = {}
        self.doc_of: dict[str, int] = {}  # item id -> document number
        self.avgdl = 0.0

    def __len__(self) -> int:
        return len(self.doc_ids)

    @staticmethod
    def _terms(it: dict) -> list[str]:
        return tokenize(f"{it.get('title') or ''} {it.get('category') or ''}")

    @classmethod
    def build(cls, items: Iterable[dict]) -> "BM25Index":
        idx = cls()
        for it in items:
            iid = str(it["item_id"])
            if iid in idx.doc_of:
                continue
            doc = idx.doc_of[iid] = len(idx.doc_ids)
            tokens = cls._terms(it)
            idx.doc_ids.append(iid)
            idx.doc_len.append(len(tokens))
            idx.meta[iid] = {k: it.get(k) for k in ("title", "category", "price")}
            tf: dict[str, int] = defaultdict(int)
            for t in tokens:
                tf[t] += 1
            for t, n in tf.items():
                idx.postings[t].append((doc, n))
        idx.avgdl = (sum(idx.doc_len) / len(idx.doc_len)) if idx.doc_len else 0.0
        return idx

    def updated(self, items: Iterable[dict]) -> "BM25Index":
        """A new index with ``items`` added, or replacing the documents of the same item ids (the first
        of repeated ids wins, as in :meth:`build`); this index is left unchanged, so a search running
        on it is unaffected. Costs copies of the per-document arrays and of the term table plus the
        posting lists of the changed documents' terms, not a re-tokenisation of every document.
        Searches give the same results as on ``build`` of the updated catalogue."""
        idx = BM25Index(self.k1, self.b)
        idx.postings = defaultdict(list, self.postings)  # lists shared with this index until copied below
        idx.doc_ids, idx.doc_len = list(self.doc_ids), list(self.doc_len)
        idx.meta, idx.doc_of = dict(self.meta), dict(self.doc_of)
        copied: dict[str, list[tuple[int, int]]] = {}

        def plist(term: str) -> list[tuple[int, int]]:
            if term not in copied:
                copied[term] = idx.postings[term] = list(idx.postings.get(term, ()))
            return copied[term]

        done: set[str] = set()
        for it in items:
            iid = str(it["item_id"])
            if iid in done:
                continue
            done.add(iid)
            doc = idx.doc_of.get(iid)
            if doc is None:
                doc = idx.doc_of[iid] = len(idx.doc_ids)
                idx.doc_ids.append(iid)
                idx.doc_len.append(0)
            else:
                for t in set(self._terms(idx.meta[iid])):
                    lst = plist(t)
                    lst[:] = [p for p in lst if p[0] != doc]
            tokens = self._terms(it)
            idx.doc_len[doc] = len(tokens)
            idx.meta[iid] = {k: it.get(k) for k in ("title", "category", "price")}
            tf: dict[str, int] = defaultdict(int)
            for t in tokens:
                tf[t] += 1
            for t, n in tf.items():
                plist(t).append((doc, n))
        for t, lst in copied.items():
            if not lst:
                del idx.postings[t]
        idx.avgdl = (sum(idx.doc_len) / len(idx.doc_len)) if idx.doc_len else 0.0
        return idx

    def idf(self, term: str) -> float:
        n = len(self.postings.get(term, ()))
        return math.log(1.0 + (len(self.doc_ids) - n + 0.5) / (n + 0.5))

    def search(self, query: str, n: int, restrict: set[str] | None = None) -> list[tuple[str, float]]:
        """Top ``n`` ``(item_id, bm25)`` for ``query``, best first (ties by item id)."""
        scores: dict[int, float] = defaultdict(float)
        k1, b, avgdl = self.k1, self.b, self.avgdl or 1.0
        for term in set(tokenize(query)):
            plist = self.postings.get(term)
            if not plist:
                continue
            idf = self.idf(term)
            for doc, tf in plist:
                dl = self.doc_len[doc]
                scores[doc] += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / avgdl))
        if restrict is not None:
            scores = {d: s for d, s in scores.items() if self.doc_ids[d] in restrict}
        best = heapq.nsmallest(n, scores.items(), key=lambda kv: (-kv[1], self.doc_ids[kv[0]]))
        return [(self.doc_ids[d], s) for d, s in best]


def load_catalogue(path: Path | None, seed: int, n_items: int) -> list[dict]:
    """Items from a JSONL/CSV file (item_id,title,category[,price]), else the simulator's
    deterministic catalogue when ``n_items`` > 0, else none."""
    if path is not None:
        path = Path(path)
        if path.suffix == ".csv":
            with path.open(newline="") as fh:
                return [dict(r) for r in csv.DictReader(fh)]
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if n_items > 0:
        from recpilot.simulator import catalogue

        out = []
        for it in catalogue(seed, n_items):
            d = it if isinstance(it, dict) else vars(it)
            out.append({"item_id": str(d.get("item_id") or d.get("id")), "title": d.get("title", ""),
                        "category": d.get("category", ""), "price": d.get("price", 0.0)})
        return out
    return []


def catalogue_from_redis(redis_url: str, key_prefix: str, batch: int = 1000, shards: int = 1,
                         cluster: bool = False) -> list[dict]:
    """The items the feature store knows (title, category, price), through the feature read API,
    for a catalogue-less deployment: Search then covers every item seen in events."""
    from services.features.client import FeatureClient

    client = FeatureClient(redis_url, key_prefix, shards=shards, cluster=cluster)
    try:
        return [{"item_id": iid, **meta} for iid, meta in client.catalogue(batch).items()]
    finally:
        client.close()


class CatalogueRefresher:
    """Keeps the BM25 index in step with the feature store: the whole catalogue once (and again if
    the store was flushed), then every ``period_s`` only the items new or changed since the last look
    (the features writer's change log), applied with :meth:`BM25Index.updated` and swapped in."""

    def __init__(self, service, redis_url: str, key_prefix: str, period_s: float, shards: int = 1,
                 cluster: bool = False) -> None:
        import threading

        self.service, self.redis_url, self.prefix, self.period_s = service, redis_url, key_prefix, period_s
        self.shards, self.cluster = shards, cluster
        self.version = None  # the catalogue change version the index holds (an int, a tuple with shards)
        self._client = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalogue", daemon=True)

    def client(self):
        if self._client is None:
            from services.features.client import FeatureClient

            self._client = FeatureClient(self.redis_url, self.prefix, shards=self.shards, cluster=self.cluster,
                                         socket_timeout=10, socket_connect_timeout=5)
        return self._client

    def refresh(self) -> int:
        """Bring the index up to date; returns how many items were (re)indexed."""
        import logging

        client = self.client()
        if self.version is not None:
            changes = client.catalogue_changes(self.version)
            if changes is not None:
                self.version, items = changes
                if items:
                    # atomic swap; a running search keeps the index it started with
                    self.service.index = self.service.index.updated({"item_id": i, **m} for i, m in items.items())
                    logging.getLogger(__name__).info("search index updated from the feature store", extra={
                        "items": len(items), "indexed": len(self.service.index), "collapse": True})
                return len(items)
        version = client.catalogue_version()  # before the scan: changes during it are read next time
        idx = BM25Index.build({"item_id": i, **m} for i, m in client.catalogue().items())
        self.service.index, self.version = idx, version
        logging.getLogger(__name__).info("search index built from the feature store", extra={"items": len(idx)})
        return len(idx)

    def _run(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        while True:
            try:
                self.refresh()
            except Exception as exc:
                log.warning("search index refresh failed", extra={"error": repr(exc), "collapse": True})
            # A cold feature store (first start) fills within seconds: look again soon until it has items.
            if self._stop.wait(self.period_s if len(self.service.index) else min(self.period_s, 5.0)):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(5)
        if self._client is not None:
            self._client.close()
