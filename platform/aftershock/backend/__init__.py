"""The backend service: routing, dedupe and resilience between the edge and inference."""
