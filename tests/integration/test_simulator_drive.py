"""`simulate` against a Recommender that answers, then disappears: shoppers click on what they were
shown (request_id propagated into CLICK/ADD_TO_CART/PURCHASE), and the simulator keeps going with
plain open-loop traffic when the server is gone. Real Kafka; the Recommender is a small real gRPC
server in this process standing in for the inference service."""

from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from recpilot.kafka import create_topics, delete_topics, producer, read_to_end
from recpilot.pb import events_pb2, recommend_pb2, recommend_pb2_grpc
from recpilot.simulator import ShopSimulator
from recpilot.simulator.drive import RecommenderProbe, simulate

pytestmark = pytest.mark.timeout(120)


class Recommender(recommend_pb2_grpc.RecommenderServicer):
    def __init__(self, item_ids):
        self.item_ids = item_ids
        self.request_ids: list[str] = []

    def Recommend(self, request, context):  # noqa: N802 - gRPC method name
        self.request_ids.append(request.request_id)
        items = [recommend_pb2.ScoredItem(item_id=i, score=1.0 / (p + 1), position=p + 1, propensity=1.0)
                 for p, i in enumerate(self.item_ids[: request.k])]
        return recommend_pb2.RecommendResponse(items=items, request_id=request.request_id,
                                               model_name="fake", model_version="1")


def test_simulate_uses_the_recommender_and_survives_its_absence(stack, platform_settings, unique, wait_until):
    p = platform_settings
    topic = f"test-ingest-sim-{unique}"
    create_topics(p, [topic], 1)
    sim = ShopSimulator(seed=3, n_users=50, n_items=200)
    # the most attractive items for these users at the top, so that clicks are frequent
    servicer = Recommender([it.item_id for it in sorted(sim.items, key=lambda it: -it.quality)[:10]])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    recommend_pb2_grpc.add_RecommenderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    probe = RecommenderProbe(f"127.0.0.1:{port}", timeout_s=0.5, retry_s=0.5)
    stopped = threading.Event()
    result = {}

    def run():
        result["r"] = simulate(producer(p), topic, sim, rate=300, probe=probe, recommend_share=0.5,
                               stop=stopped.is_set)

    th = threading.Thread(target=run)
    th.start()
    try:
        wait_until(lambda: len(servicer.request_ids) > 50 or not th.is_alive(), 60,
                   lambda: f"only {len(servicer.request_ids)} Recommend calls")
        server.stop(0).wait()  # the Recommender goes away mid-run
        n_calls = len(servicer.request_ids)
        time.sleep(2.0)  # the simulator runs on without it (the last 1.5 s of events are checked below)
        assert th.is_alive(), "the simulator stopped when the server went away"
    finally:
        stopped.set()
        th.join(30)
        probe.close()
    res = result["r"]
    events = [events_pb2.UserEvent.FromString(m.value()) for m in read_to_end(p, topic, idle_s=0.5)]
    delete_topics(p, [topic])

    assert n_calls > 50
    issued = set(servicer.request_ids)
    outcomes = [e for e in events if e.request_id]
    assert outcomes, "no shopper acted on a recommendation"
    assert all(e.request_id in issued for e in outcomes)
    assert all(e.event_type in (events_pb2.CLICK, events_pb2.VIEW, events_pb2.ADD_TO_CART, events_pb2.PURCHASE)
               for e in outcomes)
    # a VIEW carrying a request id is the product page opened by a click on that recommendation
    clicked = {(e.request_id, e.item_id) for e in outcomes if e.event_type == events_pb2.CLICK}
    views = [(e.request_id, e.item_id) for e in outcomes if e.event_type == events_pb2.VIEW]
    assert views and set(views) <= clicked
    # the CTR line counts every shown item and every click on one, by the policy that chose the list
    answered = res.recommend_calls - res.recommend_failures
    assert res.shown == 10 * answered and res.clicks == len(clicked)
    assert res.by_policy == {"-": [res.shown, res.clicks]}  # this fake server names no policy
    assert {e.item_id for e in outcomes} <= set(servicer.item_ids)
    # after the server stopped: plain open-loop traffic kept flowing
    assert res.kinds.get("open_loop", 0) > 0 and res.recommend_failures >= 1
    assert len(events) == sum(res.kinds.values())  # every produced event arrived
    late = [e for e in events if e.timestamp_ms > time.time() * 1000 - 1500]
    assert late and all(not e.request_id for e in late)
