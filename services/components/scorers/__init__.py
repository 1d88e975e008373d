"""Scorers, one module each; the module name is the ``type`` in services/pipeline.toml."""
