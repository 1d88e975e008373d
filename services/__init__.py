"""The online services: retrieval and ranking (gRPC), gateway (HTTP)."""
