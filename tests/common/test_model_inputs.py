"""common.model_inputs: id lookups, the user tower feed and the ranker matrix."""

from __future__ import annotations

import numpy as np
import pytest

from common.model_inputs import ModelInputError, ModelInputs

G = 3
SPEC = {
    "n_recent": 4,
    "categorical": [{"source": "user_profile:age_bucket", "cardinality": 8},
                    {"source": "user_profile:gender", "cardinality": 3}],
}
RANKER = [
    {"name": "retrieval_score", "dtype": "float32", "source": "cross:retrieval_score"},
    {"name": "pop", "dtype": "float32", "source": "item_aggregates:popularity"},
    {"name": "age", "dtype": "float32", "source": "user_profile:age"},
    {"name": "aff", "dtype": "float32", "source": "cross:user_genre_affinity"},
    {"name": "aff_max", "dtype": "float32", "source": "cross:user_genre_affinity_max"},
    {"name": "match", "dtype": "float32", "source": "cross:genre_match_count"},
    *({"name": f"g{i}", "dtype": "float32", "source": "item_profile:genres", "index": i} for i in range(G)),
    *({"name": f"a{i}", "dtype": "float32", "source": "user_aggregates:genre_affinity", "index": i} for i in range(G)),
]


@pytest.fixture
def mi() -> ModelInputs:
    return ModelInputs(np.array([-1, 7, 3, 12]), np.array([-1, 100, 5, 2_000_000_000]), SPEC, RANKER, G)


def test_rows_unknown_is_zero(mi):
    assert mi.user_rows(np.array([3, 12, 7, 4, -1, 10**12])).tolist() == [2, 3, 1, 0, 0, 0]
    # sparse ids (a large one) go through the sorted lookup
    assert mi.item_rows(np.array([5, 2_000_000_000, 100, 6])).tolist() == [2, 3, 1, 0]


def test_user_tower_feed(mi):
    feed = mi.user_tower_feed(12, {"user_profile:age_bucket": 3, "user_profile:gender": 9,
                                   "user_aggregates:genre_affinity": [0.5, 0.5, 0.0]}, [5, 999, 100, 5, 100])
    assert feed["user_idx"].tolist() == [3]
    assert feed["user_cat"].tolist() == [[3, 0]]  # out-of-vocabulary gender -> 0
    assert feed["user_genre_affinity"].dtype == np.float32
    assert feed["recent_item_idx"].tolist() == [[2, 0, 1, 2]]  # truncated to n_recent
    cold = mi.user_tower_feed(None, {}, [])
    assert cold["user_idx"].tolist() == [0] and cold["recent_item_idx"].sum() == 0
    assert cold["user_genre_affinity"].tolist() == [[0.0] * G]
    batch = mi.user_tower_feed_batch([12, None], [{"user_profile:age_bucket": 3}, {}], [[5], []])
    assert batch["user_idx"].tolist() == [3, 0]
    assert batch["recent_item_idx"].shape == (2, 4)
    with pytest.raises(ModelInputError):
        mi.user_tower_feed(7, {"user_aggregates:genre_affinity": [1.0, 0.0]}, [])


def test_ranker_matrix_columns_follow_the_manifest(mi):
    genres = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    aff = np.array([0.2, 0.0, 0.8], np.float32)
    x = mi.ranker_matrix({"user_profile:age": 31.0, "user_aggregates:genre_affinity": aff},
                         {"item_aggregates:popularity": np.array([0.5, 1.0]), "item_profile:genres": genres},
                         np.array([0.9, 0.1]))
    assert x.dtype == np.float32 and x.shape == (2, len(RANKER))
    assert x[:, 0].tolist() == pytest.approx([0.9, 0.1])
    assert x[:, 1].tolist() == pytest.approx([0.5, 1.0])
    assert x[:, 2].tolist() == [31.0, 31.0]
    assert x[:, 3].tolist() == pytest.approx([1.0, 0.0])
    assert x[:, 4].tolist() == pytest.approx([0.8, 0.0])
    assert x[:, 5].tolist() == [2.0, 0.0]
    assert x[:, 6:9].tolist() == genres.tolist()
    np.testing.assert_allclose(x[:, 9:12], np.stack([aff, aff]))


def test_ranker_matrix_per_row_user_values_match_single_requests(mi):
    genres = np.array([[1, 0, 1], [0, 1, 0]], np.float32)
    aff = np.array([[0.2, 0.0, 0.8], [0.0, 1.0, 0.0]], np.float32)
    items = {"item_aggregates:popularity": np.array([0.5, 1.0]), "item_profile:genres": genres}
    both = mi.ranker_matrix({"user_profile:age": np.array([20.0, 40.0]), "user_aggregates:genre_affinity": aff},
                            items, np.array([0.3, 0.4]))
    for r in range(2):
        one = mi.ranker_matrix({"user_profile:age": [20.0, 40.0][r], "user_aggregates:genre_affinity": aff[r]},
                               {k: v[r:r + 1] for k, v in items.items()}, np.array([[0.3, 0.4][r]]))
        assert both[r].tolist() == pytest.approx(one[0].tolist())


def test_ranker_matrix_missing_features_are_zero_and_bad_shapes_fail(mi):
    x = mi.ranker_matrix({}, {}, np.zeros(3))
    assert x.shape == (3, len(RANKER)) and not x.any()
    with pytest.raises(ModelInputError):
        mi.ranker_matrix({}, {"item_aggregates:popularity": np.zeros(2)}, np.zeros(3))
    with pytest.raises(ModelInputError):
        ModelInputs(np.array([-1]), np.array([-1]), SPEC, [{"name": "x", "source": "cross:nope"}], G)
