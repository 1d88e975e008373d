"""The components a request pipeline is made of (product-mixer style), one small module each.

* :mod:`.candidate_source` - ``CandidateSource``: one call per request, candidates best first.
  Implementations: one module each under ``sources/`` (``two_tower``, ``popular``, ...).
* :mod:`.filter` - ``Filter``: the kept candidates and the removed ones, the filter's name as the
  reason. Implementations under ``filters/``.
* :mod:`.merger` - ``Merger``: per-source quotas, de-duplication, truncation to k.
* :mod:`.scorer` - ``Scorer``: scores, same order and length out as in. Implementations under
  ``scorers/`` (``onnx_ranker``).
* :mod:`.config` - the pipeline as configuration (``services/pipeline.toml``): which named
  components fill which slot, validated at start-up.

Every component has a ``name``: the label of its metrics and its key in explain output. Like
Merlin's ops, a component's constructor holds configuration only; ``load_artifacts(bundle)`` loads
what it needs from the bundle; the per-request call is plain numpy.
"""
