"""The edge: an OpenAI-compatible HTTP front (REST and Server-Sent Events) over the backend's gRPC."""
