"""``python -m architect diagnose``: a running stack's metrics -> findings and remediations.

:mod:`.scrape` takes two looks at the stack (direct ``/metrics`` scrapes or Prometheus's query
API) and turns them into a :class:`~.scrape.Window`; :mod:`.rules` turns a window into
:class:`~.findings.Finding` objects (severity, kind, component, title, evidence, remediation, a
runbook anchor in docs/runbook.md); :mod:`.cli` is the command. Nothing runs at import.
"""
