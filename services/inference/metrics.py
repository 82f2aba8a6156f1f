"""Prometheus metrics of the inference service (module level, few labels).

Average batch size = ``recpilot_inference_batch_requests_total / recpilot_inference_batch_executions_total``
(rows: ``..._batch_rows_total``), as Triton counts inference requests and executions separately.
Process CPU and memory come from prometheus-client's process collector (``process_cpu_seconds_total``,
``process_resident_memory_bytes``); GPU gauges are filled when CUDA is in use.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LAT = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

REQUESTS = Counter("recpilot_inference_requests_total", "RPCs answered", ["method", "model", "version", "variant"])
FAILURES = Counter("recpilot_inference_failures_total", "RPCs that failed, by gRPC status (model: the requested "
                   "model, 'unknown' when not served; version: the one that failed, '-' when none was chosen)",
                   ["method", "model", "version", "code"])
FALLBACKS = Counter("recpilot_inference_fallbacks_total", "answers from popularity", ["method", "reason"])
LATENCY = Histogram("recpilot_inference_request_latency_seconds", "RPC latency (total)", ["method"], buckets=_LAT)
QUEUE = Histogram("recpilot_inference_queue_latency_seconds", "wait in the batch queue", ["model"], buckets=_LAT)
FEATURE_FETCH = Histogram("recpilot_inference_feature_fetch_seconds", "feature store round trip", buckets=_LAT)
COMPUTE = Histogram("recpilot_inference_compute_seconds", "model execution", ["model"], buckets=_LAT)
BATCH_SIZE = Histogram(
    "recpilot_inference_batch_size_requests", "requests per execution", ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_REQUESTS = Counter("recpilot_inference_batch_requests_total", "requests executed", ["model"])
BATCH_EXECUTIONS = Counter("recpilot_inference_batch_executions_total", "model executions", ["model"])
BATCH_ROWS = Counter("recpilot_inference_batch_rows_total", "rows scored", ["model"])
QUEUE_REJECTED = Counter("recpilot_inference_queue_rejected_total", "requests refused: queue full", ["model"])
EXECUTIONS_ABANDONED = Counter("recpilot_inference_executions_abandoned_total", "model executions no longer "
                               "waited for: every caller of the batch had passed its deadline", ["model"])
BATCH_RETRIES = Counter("recpilot_inference_batch_retries_total", "batch executions that failed and were re-run "
                        "one request at a time (so only the failing request fails)", ["model"])
DEPENDENCY_UP = Gauge("recpilot_inference_dependency_up", "1 when the dependency answered the last health check "
                      "(0: answers are flagged fallbacks; the replica stays ready)", ["dependency"])
QUEUE_DEPTH = Gauge("recpilot_inference_queue_depth_requests", "requests waiting", ["model"])

MODEL_LOADS = Counter("recpilot_inference_model_loads_total", "model version loads (outcome: ok, failed, timeout)",
                      ["model", "outcome"])
POLICY_LOADS = Counter("recpilot_inference_policy_loads_total", "re-ranking policy version loads (outcome: ok, "
                       "failed, timeout)", ["model", "outcome"])
POLICY_SECONDS = Histogram("recpilot_inference_policy_seconds", "re-ranking policy per request (pool, values, slate)",
                           ["policy"], buckets=_LAT)
MODEL_UNLOADS = Counter("recpilot_inference_model_unloads_total", "model version unloads", ["model"])
MODEL_LOAD_SECONDS = Histogram(
    "recpilot_inference_model_load_seconds", "load + warm-up time", ["model"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
MODEL_UNLOAD_SECONDS = Histogram(
    "recpilot_inference_model_unload_seconds", "drain + unload time", ["model"],
    buckets=(0.001, 0.01, 0.1, 0.5, 1, 5, 30),
)
MODEL_LOADED = Gauge("recpilot_inference_model_loaded_info", "1 for each loaded version and its role", ["model", "version", "role"])

IMPRESSIONS = Counter("recpilot_inference_impressions_total", "impressions by outcome", ["outcome"])
IMPRESSIONS_PENDING = Gauge("recpilot_inference_impressions_pending", "impressions queued for the producer thread")
SHADOW = Counter("recpilot_inference_shadow_scored_total", "requests also scored by the shadow", ["model", "version"])
GPU_UTIL = Gauge("recpilot_inference_gpu_utilization_ratio", "GPU utilisation (0..1)", ["device"])
GPU_MEMORY = Gauge("recpilot_inference_gpu_memory_bytes", "GPU memory allocated by this process", ["device"])


def sample_gpu() -> None:
    """Fill the GPU gauges when torch is loaded and CUDA is in use (never imports torch itself)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        for i in range(torch.cuda.device_count()):
            GPU_MEMORY.labels(f"cuda:{i}").set(torch.cuda.memory_allocated(i))
            try:
                GPU_UTIL.labels(f"cuda:{i}").set(torch.cuda.utilization(i) / 100.0)
            except Exception:  # needs pynvml; memory is still reported
                pass
    except Exception:
        pass


LOOP_LAG = Histogram("recpilot_inference_event_loop_lag_seconds", "how late a 50 ms timer fires on the serving "
                     "event loop", buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
LOOP_STALLS = Counter("recpilot_inference_event_loop_stalls_total", "times the serving event loop did not tick for "
                      "loop_stall_s (liveness failed meanwhile)")
GC_PAUSE = Histogram("recpilot_inference_gc_pause_seconds", "Python cyclic garbage collector pauses (the GIL is "
                     "held: every thread of the process waits)", ["generation"],
                     buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))


def install_gc_metrics() -> None:
    """Time every collection of the cyclic GC into GC_PAUSE (idempotent)."""
    import gc
    import time as _time

    if getattr(install_gc_metrics, "_installed", False):
        return
    started: list[float] = [0.0]
    children = [GC_PAUSE.labels(str(g)) for g in range(3)]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = _time.perf_counter()
        else:
            children[info.get("generation", 2)].observe(_time.perf_counter() - started[0])

    gc.callbacks.append(callback)
    install_gc_metrics._installed = True
