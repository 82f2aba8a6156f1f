"""The stack manager's Kafka part, without starting Kafka."""


def test_cluster_ids_never_start_with_a_dash(monkeypatch):
    """A base64url UUID starts with '-' once in 64; StorageTool would read it as an option."""
    import uuid

    from recpilot.stack import kafka

    dash_first = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))  # base64url of 0xF8... starts with '-'
    fresh = [dash_first, uuid.UUID(int=12345)]
    monkeypatch.setattr(kafka.uuid, "uuid4", lambda: fresh.pop(0))
    cid = kafka.new_cluster_id()
    assert not cid.startswith("-") and len(cid) == 22 and fresh == []
    assert not kafka.valid_cluster_id("-" + "A" * 21)
