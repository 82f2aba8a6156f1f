"""The generated messages and services carry the fields and RPCs the services rely on."""

from recpilot.pb import deployments_pb2, events_pb2, recommend_pb2


def test_user_event_roundtrip_and_contract():
    ev = events_pb2.UserEvent(event_id="e1", user_id="u1", session_id="s1", event_type=events_pb2.ADD_TO_CART,
                              item_id="i9", price=19.5, timestamp_ms=1_700_000_000_000, request_id="r1",
                              context={"category": "shoes"})
    back = events_pb2.UserEvent.FromString(ev.SerializeToString())
    assert back == ev and back.context["category"] == "shoes"
    names = {v.name for v in events_pb2.EventType.DESCRIPTOR.values}
    assert {"VIEW", "CLICK", "ADD_TO_CART", "PURCHASE", "SEARCH"} <= names
    svc = recommend_pb2.DESCRIPTOR.services_by_name["Recommender"]
    assert set(svc.methods_by_name) == {"Recommend", "Search"}
    resp = recommend_pb2.RecommendResponse.DESCRIPTOR.fields_by_name
    assert {"items", "request_id", "model_version", "policy_version", "fallback"} <= set(resp)
    item = recommend_pb2.ScoredItem.DESCRIPTOR.fields_by_name
    assert {"item_id", "score", "position", "propensity"} <= set(item)
    actions = {v.name for v in deployments_pb2.DeploymentAction.DESCRIPTOR.values}
    assert {"DEPLOY", "PROMOTE", "CANARY", "SHADOW", "ROLLBACK"} <= actions
