"""Ranking service: scores retrieval candidates with the ONNX ranker over online features."""
