"""LLM serving: what the client feels (TTFT, inter-token latency, tokens/s) next to what the engine
does (batch, queue, KV cache, vLLM's own latencies) and the GPU underneath.

The engine panels read vLLM's metric names, which every engine exports (the simulator included), so
this dashboard reads the same on a laptop and on a GPU node.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as dashboard_b
from grafana_foundation_sdk.models import dashboard

from . import base, promql
from .panels import (
    BYTES,
    COUNT,
    PER_SEC,
    RATIO,
    SECONDS,
    TOKENS_PER_SEC,
    Q,
    quantile_panel,
    stat_panel,
    timeseries_panel,
)
from .promql import ENGINE_MODEL, MODEL, agg, rate, sum_by

UID = "aftershock-llm-serving"
TITLE = "Aftershock / LLM serving"

TTFT = "aftershock_time_to_first_token_seconds"
ITL = "aftershock_inter_token_latency_seconds"
OUTPUT_TOKENS = "aftershock_output_tokens_total"

# TTFT SLO thresholds (see TTFT_BUCKETS in aftershock.metrics: 0.5 s and 1 s are bucket bounds,
# so the share under them is exact, not interpolated).
TTFT_SLO_STEPS = ((0.5, "orange"), (1.0, "red"))
KV_STEPS = ((0.8, "orange"), (0.95, "red"))
GPU_BUSY_STEPS = ((0.9, "orange"), (0.98, "red"))
NO_GPU = "no GPU on this host"

_EDGE_TOKENS = sum_by(rate(OUTPUT_TOKENS, 'service="edge"', MODEL), "model")


def _gpu(metric: str) -> str:
    return agg("max", metric, ("instance", "gpu"))


def _summary_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    return (
        builder.with_row(dashboard_b.Row("Now"))
        .with_panel(
            stat_panel(
                "TTFT p95 (client)",
                Q(promql.histogram_quantile(0.95, TTFT, MODEL)),
                unit=SECONDS,
                description="Client-perceived time to first token at the edge, p95.",
                thresholds=TTFT_SLO_STEPS,
            )
        )
        .with_panel(
            stat_panel(
                "Inter-token p95 (client)",
                Q(promql.histogram_quantile(0.95, ITL, MODEL)),
                unit=SECONDS,
                description="Client-perceived time between streamed tokens at the edge, p95.",
                thresholds=((0.1, "orange"), (0.25, "red")),
            )
        )
        .with_panel(
            stat_panel(
                "Output tokens/s",
                Q(sum_by(rate(OUTPUT_TOKENS, 'service="edge"', MODEL))),
                unit=TOKENS_PER_SEC,
                description="Completion tokens delivered to clients per second.",
                base="blue",
            )
        )
        .with_panel(
            stat_panel(
                "Running requests",
                Q(sum_by(promql.selector("vllm:num_requests_running", ENGINE_MODEL))),
                unit=COUNT,
                description="Requests in the engines' running batches, all replicas.",
                base="blue",
            )
        )
        .with_panel(
            stat_panel(
                "Waiting requests",
                Q(sum_by(promql.selector("vllm:num_requests_waiting", ENGINE_MODEL))),
                unit=COUNT,
                description="Requests queued in the engines waiting for a batch slot. A queue that keeps "
                "growing means the batch is full: expect TTFT to follow.",
                thresholds=((1, "orange"), (20, "red")),
            )
        )
        .with_panel(
            stat_panel(
                "KV cache usage (max)",
                Q(agg("max", promql.selector("vllm:kv_cache_usage_perc", ENGINE_MODEL))),
                unit=RATIO,
                description="Fullest KV cache across replicas. Near 100% the engine preempts or queues.",
                thresholds=KV_STEPS,
            )
        )
    )


def _client_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    def within(bound: float) -> Q:
        under = sum_by(rate(f"{TTFT}_bucket", promql.le_matcher(bound), MODEL))
        return Q(f"{under}\n  / {sum_by(rate(f'{TTFT}_count', MODEL))}", f"TTFT <= {bound:g} s")

    ttft_within = [within(0.5), within(1.0)]
    return (
        builder.with_row(dashboard_b.Row("Client-perceived (edge)"))
        .with_panel(
            quantile_panel(
                "Time to first token",
                TTFT,
                MODEL,
                description="From request arrival at the edge to the first content byte sent. Dashed lines: "
                "the 0.5 s and 1 s SLO thresholds.",
                thresholds=TTFT_SLO_STEPS,
            )
        )
        .with_panel(
            quantile_panel(
                "Inter-token latency",
                ITL,
                MODEL,
                description="Time between consecutive streamed events divided by the tokens they carry.",
            )
        )
        .with_panel(
            timeseries_panel(
                "Output tokens/s by model",
                [Q(_EDGE_TOKENS, "{{model}}")],
                unit=TOKENS_PER_SEC,
                description="Completion tokens delivered to clients per second.",
                stacked=True,
            )
        )
        .with_panel(
            timeseries_panel(
                "Requests within TTFT SLO",
                ttft_within,
                unit=RATIO,
                description="Share of requests whose first token came within 0.5 s and within 1 s.",
                min_val=None,
                max_val=1,
            )
        )
    )


def _engine_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    def engine_rate(metric: str) -> str:
        return sum_by(rate(metric, ENGINE_MODEL))

    return (
        builder.with_row(dashboard_b.Row("Engine (vllm:* metrics)"))
        .with_panel(
            timeseries_panel(
                "Running & waiting requests",
                [
                    Q(
                        sum_by(promql.selector("vllm:num_requests_running", ENGINE_MODEL), "model_name"),
                        "running {{model_name}}",
                    ),
                    Q(
                        sum_by(promql.selector("vllm:num_requests_waiting", ENGINE_MODEL), "model_name"),
                        "waiting {{model_name}}",
                    ),
                ],
                unit=COUNT,
                description="Continuous batching: requests in the running batch and in the waiting queue.",
            )
        )
        .with_panel(
            timeseries_panel(
                "KV cache usage",
                [
                    Q(
                        agg(
                            "max",
                            promql.selector("vllm:kv_cache_usage_perc", ENGINE_MODEL),
                            ("instance", "model_name"),
                        ),
                        "{{model_name}} {{instance}}",
                    )
                ],
                unit=RATIO,
                description="KV cache blocks in use per replica, 0 to 100%.",
                max_val=1,
                thresholds=KV_STEPS,
            )
        )
        .with_panel(
            quantile_panel(
                "Engine time to first token",
                "vllm:time_to_first_token_seconds",
                ENGINE_MODEL,
                description="TTFT inside the engine (queue + prefill). The gap to the client TTFT is "
                "network, routing and retries.",
                thresholds=TTFT_SLO_STEPS,
            )
        )
        .with_panel(
            quantile_panel(
                "Engine end-to-end latency",
                "vllm:e2e_request_latency_seconds",
                ENGINE_MODEL,
                description="Engine time from arrival to the last token.",
            )
        )
        .with_panel(
            quantile_panel(
                "Engine queue time",
                "vllm:request_queue_time_seconds",
                ENGINE_MODEL,
                description="Time a request waited before the scheduler admitted it to the batch.",
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Prompt vs generation tokens/s",
                [
                    Q(engine_rate("vllm:prompt_tokens_total"), "prompt (prefill)"),
                    Q(engine_rate("vllm:generation_tokens_total"), "generation (decode)"),
                ],
                unit=TOKENS_PER_SEC,
                description="Tokens the engines prefilled and generated per second.",
                width=8,
            )
        )
        .with_panel(
            timeseries_panel(
                "Finished requests by reason",
                [
                    Q(
                        sum_by(rate("vllm:request_success_total", ENGINE_MODEL), "finished_reason"),
                        "{{finished_reason}}",
                    )
                ],
                unit=PER_SEC,
                description="Requests the engines finished per second: stop (natural end), length (hit "
                "max_tokens), abort (cancelled or past deadline).",
                stacked=True,
                width=8,
            )
        )
    )


def _gpu_row(builder: dashboard_b.Dashboard) -> dashboard_b.Dashboard:
    used = _gpu("aftershock_gpu_memory_used_bytes")
    total = _gpu("aftershock_gpu_memory_total_bytes")
    return (
        builder.with_row(dashboard_b.Row("GPU (NVML)"))
        .with_panel(
            timeseries_panel(
                "GPU utilization",
                [Q(_gpu("aftershock_gpu_utilization_ratio"), "GPU {{gpu}} {{instance}}")],
                unit=RATIO,
                description="Fraction of time each GPU was busy. Absent where no GPU exists.",
                max_val=1,
                thresholds=GPU_BUSY_STEPS,
                width=8,
                no_value=NO_GPU,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU memory",
                [Q(used, "used GPU {{gpu}} {{instance}}"), Q(total, "total GPU {{gpu}} {{instance}}")],
                unit=BYTES,
                description="GPU memory in use and in all. vLLM reserves most of it for the KV cache "
                "up front.",
                width=8,
                no_value=NO_GPU,
            )
        )
        .with_panel(
            timeseries_panel(
                "GPU memory used",
                [Q(f"{used}\n  / {total}", "GPU {{gpu}} {{instance}}")],
                unit=RATIO,
                description="GPU memory in use as a share of the total.",
                max_val=1,
                thresholds=KV_STEPS,
                width=8,
                no_value=NO_GPU,
            )
        )
    )


def build() -> dashboard.Dashboard:
    builder = base.new_dashboard(
        UID,
        TITLE,
        "Client-perceived TTFT and inter-token latency, throughput, the engine's batch, queue and KV "
        "cache (vLLM metric names on every engine), and GPU utilization and memory.",
    )
    builder = _summary_row(builder)
    builder = _client_row(builder)
    builder = _engine_row(builder)
    builder = _gpu_row(builder)
    return base.finish(builder)
