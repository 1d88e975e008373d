"""Offline pipeline: MovieLens-100K -> two-tower + ranker -> evaluated, gated, versioned bundle."""
