"""Code shared by the offline pipeline and the three services: settings, artifact bundle,
telemetry, gRPC server plumbing and the generated protobuf modules (``common.proto``)."""
