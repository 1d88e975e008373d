"""Locust load test of the gateway (``python -m loadtest``; traffic model in ``locustfile.py``)."""
