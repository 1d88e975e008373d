"""Code shared by the offline pipeline, the three services and the tooling around them: settings,
artifact bundle, telemetry, gRPC server plumbing, ONNX sessions (``common.onnx``), the generated
protobuf modules (``common.proto``), loopback port helpers (``common.net``) and the latency
percentile of the load generators (``common.stats``)."""
