"""The events consumer: applies the gateway's event stream to the real-time state.

``python -m services.events`` reads ``{recsys:ev}:stream`` in consumer group ``appliers``
(:mod:`common.realtime`) and, per batch, updates the per-user state, the popularity and
co-visitation aggregates, the users' Feast rows (``user_context``, ``user_seen``, written
directly by :mod:`feature_store.writer`) and their generations, then acknowledges the batch.
``python -m services.events export`` writes the stream's events to a file for the offline
pipeline. Modules: settings, catalog (served item ids), aggregates (the Lua script), apply
(one batch), stream (group, reads, claims, acks, dead letters, trim, lag), consumer (the loop),
metrics, health (HTTP), export, __main__ (CLI).
"""
