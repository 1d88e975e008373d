"""One way to open an ONNX model: :func:`cpu_session`, used by the services and the offline pipeline.

The thread settings are the point. The serving processes run one request at a time on a
machine of 1-2 shared cores: with ``intra_op_num_threads`` above 1 onnxruntime's worker threads
spin waiting for work and blow the p99 (measured: several ms of tail for a sub-ms model), so the
default is one thread, sequential execution. Offline batch scoring (the item tower over a
1M-item catalog) may ask for more intra-op threads; nothing here ever uses inter-op threads.
``onnxruntime`` is imported when a session is opened, not at import.
"""

from __future__ import annotations

from pathlib import Path


def cpu_session(path: str | Path, intra_op_threads: int = 1):
    """An ``onnxruntime.InferenceSession`` on the CPU provider, all graph optimisations on."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
