"""The gRPC inference facade (issue 3 builds it; this distribution holds its dependencies)."""
