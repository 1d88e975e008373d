"""``onnx_ranker``: the bundle's ONNX ranker over the user + item features of each candidate.

The matrix is assembled in ``manifest["ranker_features"]`` order by
:meth:`common.model_inputs.ModelInputs.ranker_matrix`, the function the ranker's training set was
built with; the retrieval score of each candidate is one of its columns.
"""

from __future__ import annotations

import numpy as np

from common.bundle import Bundle, BundleError
from common.model_inputs import ModelInputs
from common.onnx import cpu_session
from services.components.scorer import Scorer
from services.features import ItemView, UserView


class OnnxRanker(Scorer):
    artifacts = ("ranker",)

    def load_artifacts(self, bundle: Bundle) -> None:
        self.session = cpu_session(bundle.path("ranker"))  # one thread: see common.onnx
        self.inputs = ModelInputs.from_bundle(bundle)
        shape = self.session.get_inputs()[0].shape
        if len(shape) != 2 or (isinstance(shape[1], int) and shape[1] != self.inputs.n_features):
            raise BundleError(f"ranker input shape {shape} does not match {self.inputs.n_features} ranker_features")
        self._input = self.session.get_inputs()[0].name
        self._output = self.session.get_outputs()[0].name

    def matrix(self, user: UserView, items: ItemView, retrieval_scores: np.ndarray) -> np.ndarray:
        """The model's input rows (also what explain shows as the scorer's inputs)."""
        return self.inputs.ranker_matrix(user.values, items.values, retrieval_scores)

    def score(self, user: UserView, items: ItemView, retrieval_scores: np.ndarray) -> np.ndarray:
        matrix = self.matrix(user, items, retrieval_scores)
        return self.session.run([self._output], {self._input: matrix})[0].reshape(-1)


COMPONENT = OnnxRanker
