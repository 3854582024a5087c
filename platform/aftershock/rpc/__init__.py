"""gRPC plumbing shared by the backend and inference services."""
