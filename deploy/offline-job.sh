#!/bin/sh
# The compose `offline` job (CMD of the `offline` image target), run once before the services:
#
#   * no valid bundle in the `artifacts` volume: `python -m models run` does everything
#     (MovieLens-100K -> train -> evaluate -> gate -> publish -> feast apply + materialise);
#   * a bundle that loads and verifies (a second `docker compose up`): no retraining, but
#     apply + materialise again so a Redis that lost its data is filled (idempotent).
#
# Any failure exits non-zero, and the services (depends_on: service_completed_successfully)
# do not start.
set -eu
cd /app
if [ -e artifacts/current/manifest.json ] && python -m models run --skip-if-current; then
  python -m feature_store apply
  python -m feature_store materialize
else
  python -m models run
fi
