"""A real KServe v2 gRPC model server standing in for OVMS in tests (run with /work/main/.venv-kserve)."""
