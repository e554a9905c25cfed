"""Fresh values (issue 16, item 1): filter values first seen in an item update are filterable at
once and exactly -- found by a filter on them, never returned under ``NOT`` them (fresh or updated
items), gone with the item -- through ``Retriever`` and HTTP, and after a restart with ``--updates``."""
import pytest
from starlette.testclient import TestClient

from silverrec.retrieval import BloomIndex
from silverrec.retrieval.fresh_terms import FreshTerms
from silverrec.serve import Retriever
from silverrec.serve.batching import BatchingConfig
from silverrec.serve.http import ServerConfig, ServingApp


def _item(item_id, **attrs):
    base = {"category": ["music"], "language": ["en"], "creator": ["cr00001"], "tags": ["tag-1"], "year": ["2020"]}
    return {"item_id": item_id, "attributes": {**base, **attrs}}


def _ids(retriever, users, flt, k=None):
    return [[r[0] for r in rows] for rows in retriever.query(users, filter=flt, k=k)]


class LiveItems:
    """The items a Retriever serves, with their attributes, for an exact host-side check."""

    def __init__(self, dataset):
        self.attrs = dict(zip(dataset.schema.item_ids, dataset.item_terms()))

    def upsert(self, retriever, items):
        retriever.upsert_items(items)
        self.attrs.update({it["item_id"]: it["attributes"] for it in items})

    def delete(self, retriever, ids):
        retriever.delete_items(ids)
        for x in ids:
            self.attrs.pop(x, None)

    def matches(self, flt):
        """The ids that satisfy ``flt`` exactly (a Bloom index built over the live items)."""
        names = list(self.attrs)
        index = BloomIndex.build([self.attrs[x] for x in names])
        return {x for x, ok in zip(names, index.matches([flt])[0].tolist()) if ok}


@pytest.fixture()
def fresh_retriever(model_path):
    r = Retriever(model_path)  # its own Retriever: these tests change the index
    yield r
    r.close()


def test_new_value_found_exactly_and_not_excludes_it(fresh_retriever, tiny_dataset, users):
    r, live = fresh_retriever, LiveItems(tiny_dataset)
    k = r.k
    assert _ids(r, users[:2], "category:zz123") == [[], []]
    live.upsert(r, [_item("new-item-0", category=["zz123"]),
                    _item("probe-new-1", category=["zz-shared"], creator=["cr-other-1"]),
                    _item("probe-new-2", category=["zz-shared"], creator=["cr-brand-new-777"])])
    assert _ids(r, users[:3], "category:zz123") == [["new-item-0"]] * 3
    assert [set(x) for x in _ids(r, users[:2], "category:zz-shared")] == [{"probe-new-1", "probe-new-2"}] * 2
    # the block list on a brand-new creator blocks, and only that item
    assert _ids(r, users[:3], "category:zz-shared AND NOT creator:cr-brand-new-777") == [["probe-new-1"]] * 3
    assert _ids(r, users[:2], "creator:cr-brand-new-777 AND NOT category:zz-shared") == [[], []]
    # a published item updated to a new value: found under it, never under its NOT
    published = tiny_dataset.schema.item_ids[0]
    live.upsert(r, [_item(published, creator=["cr-brand-new-777"], category=["zz-upd"])])
    assert [set(x) for x in _ids(r, users[:2], "creator:cr-brand-new-777")] == [{published, "probe-new-2"}] * 2
    assert _ids(r, users[:2], "category:zz-upd AND NOT creator:cr-brand-new-777") == [[], []]
    # every result of every filter (fresh, published and unknown values mixed) passes it exactly,
    # and a filter selecting fewer than k items returns all of them
    filters = ["NOT creator:cr-brand-new-777", "NOT category:zz123 AND NOT category:zz-shared",
               "category:zz123 OR category:zz-upd OR creator:cr-other-1", "language:en AND NOT creator:cr-brand-new-777",
               "category:never-seen-anywhere", "NOT category:never-seen-anywhere AND category:zz-shared",
               f"category:{tiny_dataset.item_terms()[1]['category'][0]} AND NOT tags:tag-1"]
    for flt in filters:
        exact = live.matches(flt)
        for rows in _ids(r, users[:8], flt, k):
            assert set(rows) <= exact, (flt, set(rows) - exact)
            if len(exact) <= 3:
                assert set(rows) == exact, flt
    # deleted: never seen again, under the value, its NOT or no filter
    live.delete(r, ["new-item-0", "probe-new-2"])
    assert _ids(r, users[:2], "category:zz123") == [[], []]
    assert _ids(r, users[:2], "category:zz-shared AND NOT creator:cr-brand-new-777") == [["probe-new-1"]] * 2
    for flt in ["", "NOT category:zz123", "NOT creator:cr-brand-new-777", "creator:cr-brand-new-777"]:
        for rows in _ids(r, users, flt, k):
            assert "new-item-0" not in rows and "probe-new-2" not in rows
    fresh = r.fresh_values()
    assert fresh["values"] == {"category": ["zz-shared", "zz-upd"], "creator": ["cr-other-1", "cr-brand-new-777"]}
    assert fresh["count"] == 5 and fresh["capacity"] > 0


def test_fresh_values_survive_a_restart(model_path, users, tmp_path):
    path = str(tmp_path / "updates.json")
    r = Retriever(model_path, updates_path=path)
    r.upsert_items([_item("new-a", category=["zz-restart"]), _item("new-b", category=["zz-restart"], tags=["t-new"])])
    r.close()
    again = Retriever(model_path, updates_path=path)
    try:
        assert [set(x) for x in _ids(again, users[:2], "category:zz-restart")] == [{"new-a", "new-b"}] * 2
        assert _ids(again, users[:2], "category:zz-restart AND NOT tags:t-new") == [["new-a"]] * 2
        assert again.fresh_values()["values"] == {"category": ["zz-restart"], "tags": ["t-new"]}
    finally:
        again.close()


def test_no_slot_left_refuses_the_upsert_and_changes_nothing(fresh_retriever, users):
    r = fresh_retriever
    full = r._updates.fresh_terms
    r._updates.fresh_terms = FreshTerms(full.first_id, 2, full.first_row, full.num_rows, full.num_hashes)
    r.upsert_items([_item("new-1", category=["zz-1"], creator=["cr-new-1"])])
    version = r.index_version
    with pytest.raises(ValueError, match=r"serving\.fresh_terms"):
        r.upsert_items([_item("new-2", category=["zz-2"])])
    assert r.index_version == version
    assert _ids(r, users[:1], "category:zz-2") == [[]]
    r.upsert_items([_item("new-3", category=["zz-1"])])  # values with a slot still fit
    assert set(_ids(r, users[:1], "category:zz-1")[0]) == {"new-1", "new-3"}


def test_http_add_filter_not_delete(model_path, users):
    server = ServingApp(Retriever(model_path), ServerConfig(BatchingConfig()))
    with TestClient(server.app) as client:
        def query(flt):
            res = client.post("/query", json={"users": users[:2], "filter": flt})
            assert res.status_code == 200, res.text
            return [[x["item_id"] for x in rows] for rows in res.json()["results"]]

        assert client.get("/schema").json()["fresh_values"]["values"] == {}
        res = client.post("/items", json=[_item("new-item-0", category=["zz123"]),
                                          _item("probe-new-2", category=["zz123"], creator=["cr-brand-new-777"])])
        assert res.status_code == 200, res.text
        assert [set(x) for x in query("category:zz123")] == [{"new-item-0", "probe-new-2"}] * 2
        assert query("category:zz123 AND NOT creator:cr-brand-new-777") == [["new-item-0"]] * 2
        assert all("probe-new-2" not in rows for rows in query("NOT creator:cr-brand-new-777"))
        fresh = client.get("/schema").json()["fresh_values"]
        assert fresh["values"] == {"category": ["zz123"], "creator": ["cr-brand-new-777"]}
        assert client.delete("/items/new-item-0").status_code == 200
        assert query("category:zz123") == [["probe-new-2"]] * 2
        assert all("new-item-0" not in rows for rows in query("") + query("NOT category:zz123"))


def test_http_recompiles_a_filter_whose_value_became_fresh_before_the_forward(model_path, users):
    """A filter compiled while ``tags:zz-race`` was unknown (its NOT compiled to TRUE) and run after
    an item holding it was added must not return that item."""
    retriever = Retriever(model_path)
    server = ServingApp(retriever, ServerConfig(BatchingConfig()))
    retriever.upsert_items([_item("race-item", category=["zz-race-base"])])
    search, calls = server.batcher.search, []

    def update_then_search(*inputs):
        if not calls:  # between this request's encoding and its forward
            retriever.upsert_items([_item("race-item", category=["zz-race-base"], tags=["zz-race"])])
        calls.append(1)
        return search(*inputs)

    server.batcher.search = update_then_search
    with TestClient(server.app) as client:
        res = client.post("/query", json={"users": users[:1], "filter": "category:zz-race-base AND NOT tags:zz-race"})
        assert res.status_code == 200, res.text
        assert res.json()["results"] == [[]]
        assert len(calls) == 2  # compiled again against the snapshot that knows the value


def test_http_excludes_an_item_added_between_encoding_and_forward(model_path, users):
    """An excluded id unknown at encoding (so ignored) that names an item added before the forward
    ran must still be excluded: the server encodes again against the snapshot that knows it (the
    stress test's 'excluded item returned')."""
    retriever = Retriever(model_path)
    server = ServingApp(retriever, ServerConfig(BatchingConfig()))
    flt = "category:zz-excl-race"  # known before the request (so no recompile), held by two items
    retriever.upsert_items([_item("excl-base", category=["zz-excl-race"])])
    search, calls = server.batcher.search, []

    def add_then_search(*inputs):
        if not calls:  # between this request's encoding and its forward
            retriever.upsert_items([_item("excl-race", category=["zz-excl-race"])])
        calls.append(1)
        return search(*inputs)

    server.batcher.search = add_then_search
    with TestClient(server.app) as client:
        res = client.post("/query", json={"users": users[:1], "filter": flt, "exclude": [["excl-race"]]})
        assert res.status_code == 200, res.text
        assert [r["item_id"] for r in res.json()["results"][0]] == ["excl-base"]
        assert res.json()["ignored_exclusions"] == [0]  # known at the answer's encoding
        assert len(calls) == 2
        res = client.post("/query", json={"users": users[:1], "filter": flt})
        assert sorted(r["item_id"] for r in res.json()["results"][0]) == ["excl-base", "excl-race"]
