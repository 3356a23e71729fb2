"""The gRPC inference facade: a transport-free runtime (``runtime.py``) over backend plug-ins (``backends/``),
behind the gRPC front door (``grpc/``); ``main.py`` is the ``visinspect-server`` entry point."""
