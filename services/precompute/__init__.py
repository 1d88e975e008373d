"""The batch job of the ``precomputed`` / ``hybrid`` serving modes: ``python -m services.precompute``."""
