"""Settings of the inference service (environment prefix AFTERSHOCK_INFERENCE_)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from aftershock.inference.sim_config import DEFAULT_SIM_MODELS, SimModelConfig


class InferenceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AFTERSHOCK_INFERENCE_", frozen=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    # Prometheus /metrics port; 0 switches it off.
    metrics_port: int = Field(9102, ge=0, le=65535)
    engine: Literal["sim", "vllm", "openai"] = "sim"
    # Replica name used in logs, spans and the backend's registry.
    replica_name: str = "inference-0"

    # sim: the models, from a YAML/JSON file (a list of SimModelConfig) or the environment as JSON.
    models_file: Path | None = None
    sim_models: tuple[SimModelConfig, ...] = DEFAULT_SIM_MODELS
    # Seed of the fault-injection dice; unset draws a fresh one at start.
    fault_seed: int | None = None

    # vllm: AsyncEngineArgs keyword arguments (model, tensor_parallel_size, ...).
    vllm_engine_args: dict[str, Any] = Field(default_factory=dict)
    vllm_served_model_name: str | None = None

    # openai: an existing OpenAI-compatible server.
    openai_base_url: str = "http://127.0.0.1:8080/v1"
    openai_api_key: SecretStr | None = None
    openai_max_model_len: int = 8192
    openai_max_output_tokens: int = 4096
    openai_timeout_s: float = 600.0
    # A stream with no event for this long after its first token is given up as stalled (UNAVAILABLE,
    # resumable elsewhere when seeded); kept under the backend's stream idle timeout (10 s) so the
    # error says what happened.
    openai_stream_idle_timeout_s: float = Field(8.0, gt=0)
    # Declare the upstream server's output reproducible for seeded/greedy requests (only when it is,
    # e.g. vLLM with VLLM_BATCH_INVARIANT=1): mid-stream failover relies on it.
    openai_reproducible: bool = False

    shutdown_grace_s: float = Field(30.0, ge=0)
    log_level: str = "INFO"
    # Debug only: allow prompt and output text in logs.
    log_content: bool = False

    def resolved_sim_models(self) -> tuple[SimModelConfig, ...]:
        if self.models_file is None:
            return self.sim_models
        raw = yaml.safe_load(self.models_file.read_text())
        items = raw.get("models", raw) if isinstance(raw, dict) else raw
        return tuple(SimModelConfig.model_validate(item) for item in items)
