"""Per-model settings of the simulator engine."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SimModelConfig(BaseModel):
    """One simulated model. Latencies are seconds; zero means "as fast as the event loop allows"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    max_model_len: int = Field(8192, gt=0)
    max_output_tokens: int = Field(4096, gt=0)
    # Used when a request gives no max_tokens (capped by what is left of the context).
    default_max_tokens: int = Field(256, gt=0)
    # Continuous batching: at most this many sequences decode together; the rest wait.
    max_num_seqs: int = Field(256, gt=0)
    # Waiting-queue bound; beyond it the engine answers RESOURCE_EXHAUSTED like an overloaded server.
    max_waiting: int = Field(4096, ge=0)
    ttft_s: float = Field(0.0, ge=0)
    prefill_s_per_token: float = Field(0.0, ge=0)
    itl_s: float = Field(0.0, ge=0)
    # KV cache in blocks of `block_size` tokens, as vLLM pages it: the capacity of the prefix cache
    # and the denominator of vllm:kv_cache_usage_perc.
    block_size: int = Field(16, gt=0)
    kv_cache_blocks: int = Field(16_384, gt=0)
    # vLLM's automatic prefix caching: prefill is charged only for prompt blocks not already cached.
    enable_prefix_caching: bool = True
    # Status-level fault injection, complementing the fault proxy's TCP-level faults.
    fault_overloaded_rate: float = Field(0.0, ge=0, le=1)
    # An injected overload that also asks the caller to leave this replica alone this long (a model
    # server's explicit Retry-After; the backend parks the replica). Unset: a one-request refusal.
    fault_overloaded_hold_s: float | None = Field(None, gt=0)
    fault_error_rate: float = Field(0.0, ge=0, le=1)
    fault_slow_start_rate: float = Field(0.0, ge=0, le=1)
    fault_slow_start_s: float = Field(1.0, ge=0)


DEFAULT_SIM_MODELS: tuple[SimModelConfig, ...] = (
    SimModelConfig(name="sim-small", ttft_s=0.03, prefill_s_per_token=0.0001, itl_s=0.01, max_model_len=8192),
    SimModelConfig(
        name="sim-large",
        ttft_s=0.12,
        prefill_s_per_token=0.0004,
        itl_s=0.03,
        max_model_len=32768,
        max_num_seqs=64,
    ),
)
