"""common.onnx.cpu_session: the thread settings every ONNX session here runs with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.bundle import load_bundle
from common.onnx import cpu_session


def test_one_thread_by_default_and_scores_like_a_plain_session(bundle_path: Path):
    import onnxruntime as ort

    bundle = load_bundle(bundle_path, verify=False)
    session = cpu_session(bundle.path("ranker"))
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (1, 1)
    assert opts.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session.get_providers() == ["CPUExecutionProvider"]

    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).random((4, inp.shape[1]), dtype=np.float32)
    plain = ort.InferenceSession(str(bundle.path("ranker")), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {inp.name: x})[0], plain.run(None, {inp.name: x})[0],
                               rtol=1e-5, atol=1e-6)


def test_offline_batch_scoring_may_ask_for_more_intra_op_threads(bundle_path: Path):
    session = cpu_session(load_bundle(bundle_path, verify=False).path("user_tower"), intra_op_threads=2)
    opts = session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (2, 1)
