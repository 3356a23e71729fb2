"""The gRPC front door (``visinspect.v1``): servicer, message converters, status mapping, health, security and
the gRPC server's lifecycle, over the transport-free :class:`~visinspect_server.runtime.InspectionRuntime`."""
