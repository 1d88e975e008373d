"""HTTP gateway: ``/recommend`` over retrieval and ranking (``python -m services.gateway``)."""
