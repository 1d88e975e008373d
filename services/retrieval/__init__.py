"""Retrieval service: two-tower (ONNX user tower + FAISS) and popularity candidate sources."""
