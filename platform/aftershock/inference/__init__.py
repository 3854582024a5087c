"""The inference service: one Engine (sim, vllm or openai) behind gRPC."""
