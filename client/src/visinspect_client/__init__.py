"""The Python SDK and CLI (issue 4 builds it; this distribution holds its dependencies)."""
