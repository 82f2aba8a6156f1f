"""Settings of the inference service (environment prefix ``RECPILOT_INFERENCE_``).

Light to import: `recpilot up` reads ``http_port`` from here before starting the service.
Shared addresses (Kafka, Redis, model repository) come from :class:`recpilot.settings.PlatformSettings`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from recpilot.settings import RecpilotSettings


class BatchingConfig(BaseModel):
    """Dynamic batching of one model (Triton's dynamic_batching, in rows of the batch dimension)."""

    model_config = {"extra": "forbid"}

    enabled: bool = True
    max_batch_size: int = Field(default=4096, ge=1, description="rows per execution")
    max_queue_delay_ms: float = Field(default=0.0, ge=0.0, description="how long the first request waits for company; "
                                      "0: run at once when idle (requests queued during an execution form the next batch)")
    max_queue_size: int = Field(default=512, ge=1, description="queued requests before RESOURCE_EXHAUSTED")


class InferenceSettings(RecpilotSettings):
    model_config = SettingsConfigDict(env_prefix="RECPILOT_INFERENCE_", extra="forbid", case_sensitive=False)

    # -- transports ------------------------------------------------------------------------
    http_port: int = Field(default=9103, ge=0, le=65535)
    http_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    grpc_port: int = Field(default=50051, ge=0, le=65535, description="0 picks a free port")
    grpc_host: str | None = Field(default=None, description="default: RECPILOT_BIND_HOST")
    grpc_max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="oversized requests are rejected")
    workers: int = Field(default=1, ge=1, le=64, description="serving processes behind the gRPC port (SO_REUSEPORT; "
                         "services/inference/workers.py); 1: this process serves")
    worker_index: int = Field(default=-1, description="set by the supervisor for its workers")
    reuse_port: bool = Field(default=False, description="bind the gRPC port with SO_REUSEPORT (set for workers)")
    grace_s: float = Field(default=10.0, ge=0.0, description="drain time for in-flight RPCs on SIGTERM")
    max_concurrent_rpcs: int = Field(default=2048, ge=1, description="RPCs the gRPC server runs at once; beyond "
                                     "it a call is refused with RESOURCE_EXHAUSTED (grpc's maximum_concurrent_rpcs)")
    loop_stall_s: float = Field(default=10.0, gt=0.0, description="liveness (/healthz, OIP ServerLive) fails when "
                                "the serving event loop has not ticked for this long (a blocking call, a hung "
                                "inline execution, a deadlock)")
    event_loop: str = Field(default="auto", pattern="^(auto|uvloop|asyncio)$",
                            description="the gRPC server's event loop; auto = uvloop when installed (less "
                                        "CPU per call than asyncio's: docs/benchmarks.md)")

    # -- models ----------------------------------------------------------------------------
    model_names: list[str] = Field(default_factory=lambda: ["ranker"], description="models this replica serves")
    default_model: str = "ranker"
    device: str = Field(default="auto", pattern="^(auto|cpu|cuda(:[0-9]+)?)$")
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)
    compute_threads: int = Field(default=0, ge=0, description="threads that run model executions; 0: on the "
                                 "event loop's thread (no hand-off and no GIL ping-pong: best for small models on "
                                 "CPU); 1+: beside it (GPU, or models slow enough that the loop must keep going)")
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    batching_per_model: dict[str, BatchingConfig] = Field(default_factory=dict, description="overrides by model name")
    deployments_topic: str = Field(default="control.deployments", description="the control topic this replica "
                                   "follows (it only reads it)")
    deployments_acks_topic: str = Field(default="", description="where this replica acknowledges deployment "
                                        "commands; empty: control.acks for control.deployments, <topic>.acks for "
                                        "another control topic")
    replica_id: str = Field(default="", description="default host:pid")
    bootstrap: bool = Field(default=True, description="with no production version of the default model: deploy its newest "
                            "version, or train + deploy a small model when the repository is empty")
    model_load_timeout_s: float = Field(default=120.0, gt=0.0, description="a version that has not loaded and "
                                        "warmed up by then counts as failed (the old version keeps serving); the "
                                        "load runs in its own thread, off the request path and off the lock that "
                                        "other deployment changes (a rollback) need")

    # -- features / candidates -------------------------------------------------------------
    feature_key_prefix: str = "rp:"
    num_candidates: int = Field(default=200, ge=1, le=5000)
    max_candidate_ids: int = Field(default=2000, ge=1, description="request candidate_ids above this are rejected")
    max_k: int = Field(default=1000, ge=1)
    policy_pool: int = Field(default=40, ge=1, le=5000, description="the pool a re-ranking policy chooses from: the "
                             "ranker's top M candidates by score, logged with every impression (a learned policy's "
                             "own pool_size overrides it; never fewer than k)")

    # -- request limits (INVALID_ARGUMENT beyond them) -------------------------------------
    max_id_length: int = Field(default=256, ge=1, description="characters of user_id, session_id, request_id, "
                               "model_name and each candidate id")
    max_query_length: int = Field(default=1024, ge=1, description="characters of a Search query")
    max_context_entries: int = Field(default=32, ge=0, description="entries of a request's context map")
    max_context_length: int = Field(default=256, ge=1, description="characters of each context key and value")
    max_infer_rows: int = Field(default=8192, ge=1, description="rows (the batch dimension) of one ModelInfer")
    item_cache_ms: float = Field(default=5000.0, ge=0.0, description="item features reused this long, +-25 % "
                                 "(0: off); user features are always read fresh")
    item_stale_ms: float = Field(default=30_000.0, ge=0.0, description="an item past item_cache_ms is still used "
                                 "this much longer while it is re-read in the background (0: read it on the request path)")
    item_cache_max: int = Field(default=200_000, ge=1, description="cached items before the cache is cleared")
    popular_cache_s: float = Field(default=2.0, ge=0.0, description="fallback popularity list refresh")

    # -- search ----------------------------------------------------------------------------
    catalogue_path: Path | None = Field(default=None, description="JSONL/CSV of item_id,title,category[,price]")
    catalogue_seed: int = 7
    catalogue_items: int = Field(default=0, ge=0, description="simulator catalogue size when no path "
                                 "(0: index the items in the feature store, refreshed every catalogue_refresh_s)")
    catalogue_refresh_s: float = Field(default=60.0, gt=0.0)
    search_candidates: int = Field(default=200, ge=1)

    # -- degradation -----------------------------------------------------------------------
    deadline_margin_ms: float = Field(default=5.0, ge=0.0, description="answer from popularity when less is left")
    default_timeout_ms: float = Field(default=1000.0, gt=0.0, description="budget when the client sets no deadline")
    redis_timeout_ms: float = Field(default=200.0, gt=0.0)

    # -- impressions / metrics -------------------------------------------------------------
    impressions_topic: str = "impressions"
    impressions_linger_ms: int = Field(default=50, ge=0, description="producer linger for impressions (batching)")
    impressions_queue: int = Field(default=100_000, ge=1, description="pending impressions before dropping")
    impressions_queue_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="estimated memory of the "
                                         "pending impressions before dropping (the newest are dropped and counted)")
    metrics_topic: str = "metrics.inference"
    metrics_interval_s: float = Field(default=10.0, gt=0.0)

    # -- security --------------------------------------------------------------------------
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = Field(default=None, description="set to require client certificates (mTLS)")
    auth_token: str | None = Field(default=None, repr=False, description="bearer token required on every RPC "
                                   "(unset: none; an empty or blank value is refused at start, and a token without "
                                   "TLS is logged as a warning: it crosses the network in clear text)")

    @field_validator("auth_token")
    @classmethod
    def _token(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("auth_token is empty: unset it to serve without a token, or set a real one")
        return v

    @model_validator(mode="after")
    def _check(self) -> "InferenceSettings":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ValueError("tls_client_ca (mTLS) needs tls_cert and tls_key")
        policies = [n for n in self.model_names if n.endswith(".policy")]
        if policies:
            raise ValueError(f"model_names {policies}: '<model>.policy' holds a model's re-ranking policies, served "
                             "with the model itself (its deployment state's policy versions), not as a ranker")
        if self.default_model not in self.model_names:
            raise ValueError(f"default_model {self.default_model!r} is not in model_names {self.model_names}")
        return self

    def batching_for(self, model: str) -> BatchingConfig:
        return self.batching_per_model.get(model, self.batching)

    def replica_settings(self, i: int, home) -> dict[str, str]:
        """What replica ``i`` (1, 2 ...) of ``recpilot up --replicas`` changes of these settings: its
        own HTTP port and its own gRPC port, ``grpc_port + i`` (clients spread calls over the
        replicas: ``recpilot simulate --target a,b``); every replica follows the control topic and
        serves the same deployment state (docs/operations.md "Scaling")."""
        out = {"grpc_port": str(self.grpc_port + i if self.grpc_port else 0)}
        if self.replica_id:
            out["replica_id"] = f"{self.replica_id}-{i}"
        return out
