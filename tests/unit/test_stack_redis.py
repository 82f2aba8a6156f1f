"""The local stack's Redis configuration, without starting Redis."""

import pytest

from recpilot.settings import PlatformSettings, SettingsError, load
from recpilot.stack.redis import RedisServer


def _config(tmp_path, **kw) -> list[str]:
    server = RedisServer(PlatformSettings(home=tmp_path, **kw), table=None)
    server.write_config()
    return server.config.read_text().splitlines()


def test_redis_memory_is_bounded_and_evicts_only_keys_with_a_ttl(tmp_path):
    lines = _config(tmp_path)
    assert "maxmemory 1gb" in lines and "maxmemory-policy volatile-lru" in lines
    assert "appendonly yes" in lines
    lines = _config(tmp_path, redis_maxmemory="256mb", redis_maxmemory_policy="noeviction")
    assert "maxmemory 256mb" in lines and "maxmemory-policy noeviction" in lines


@pytest.mark.parametrize("var, value", [
    ("RECPILOT_REDIS_MAXMEMORY_POLICY", "allkeys-lru"),  # would evict counts and offsets
    ("RECPILOT_REDIS_MAXMEMORY", "a lot"),
])
def test_redis_memory_settings_refuse_what_would_lose_counts_or_mean_nothing(monkeypatch, var, value):
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load(PlatformSettings)
