"""The architect's tools: ``design`` (requirements -> an architecture document sized from measured
costs) and ``diagnose`` (a running stack -> findings and remediations). ``python -m architect``."""
