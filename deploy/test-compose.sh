#!/usr/bin/env bash
# End-to-end test of docker-compose.yml and of README's compose quickstart (`make test-compose`;
# .ci/run calls it after `make test` when a Docker engine with Compose v2 is usable).
#
# It starts from what a new user has: the files of this working tree that git tracks or would
# track (`git ls-files -co --exclude-standard`), copied to a fresh temporary directory, so nothing
# git-ignored in your checkout (deploy/build/wheels/*.whl, .venv, data/, artifacts/, .env) can
# hide a problem. There it runs README's compose quickstart, the lines between
# `<!-- compose-quickstart:begin` and `<!-- compose-quickstart:end -->`, exactly as written
# (make torch-wheel; `docker compose up -d --build --wait`: redis -> offline job trains +
# materialises -> retrieval, ranking -> gateway, prometheus; curl /recommend). The only changes:
# the environment below (COMPOSE_PROJECT_NAME, GATEWAY_HOST_PORT, PROMETHEUS_HOST_PORT,
# PUBLISH_ADDR, COMPOSE_BAKE=false, COMPOSE_PROFILES=), which compose honours; the gateway's
# published port in place of 127.0.0.1:8000; each line under `timeout UP_TIMEOUT_S`. Then it checks
#   1. /recommend returns ranked items for a known and an unknown user (GET and POST, 422 on bad input);
#   1b. a click posted to /events (202) removes the item from that user's next answer, past a cache hit;
#   1c. README's compose-ship lines as written (<new> = the candidate they build): a candidate
#       beside current, not served; canary 10 % of fresh users on it (variant says so); promote,
#       rollback: every answer on the expected version within 10 s, no restart;
#   2. Prometheus reports every scrape target up (its HTTP API), the events consumer's included;
#   3. `stop ranking`     -> still 200, fallback = ranking_unavailable; `start` -> full answers again;
#   4. `pause retrieval`  -> answered within the deadline with a fallback; `unpause` -> full again
#      (polled with a deadline: the gateway's circuit breaker probes the dependency back);
#   5. replicas: `up -d --no-deps --wait --scale retrieval=2 --scale ranking=2 retrieval ranking`
#      adds a second replica of each, the gateway untouched (not recreated, not restarted);
#      within 90 s the running gateway sends calls to every replica of both services (each
#      replica's own /metrics, via `compose exec --index N`: found when the services close its
#      connections after *_MAX_CONNECTION_AGE_S, below), round-robin over the next 40 requests,
#      Prometheus scrapes each replica as a target of its own (dns_sd); then replica 2 of both is
#      SIGKILLed (`docker kill`) amid a stream of 120 requests: every answer 200 (no 5xx, no
#      timeout), and full (no fallback) from 3 s after the kill on;
#   6. `down -v` leaves no container, network or volume of the test project behind.
# It always runs `down -v` and removes the export on exit, and prints build time, cold `up` time
# (split at the first container's creation), the offline job's run time, request latencies and
# image sizes.
#
# Environment: COMPOSE_TEST_PROJECT (default recsys-e2e: a project of its own, so a stack you
# run yourself under the default name is untouched), UP_TIMEOUT_S (default 1800),
# GATEWAY_HOST_PORT / PROMETHEUS_HOST_PORT (default: free ports), TORCH_WHEEL_FETCH=0 (skip the
# quickstart's `make torch-wheel` line: the offline image then takes torch from TORCH_INDEX_URL),
# RETRIEVAL_MAX_CONNECTION_AGE_S / RANKING_MAX_CONNECTION_AGE_S (default 10, compose's 60 would
# make step 5 wait a minute for the gateway to find the new replicas; they reach the containers
# through docker-compose.yml's interpolation).
# For iterating on the checks: TEST_COMPOSE_REUSE=1 skips the clean start and continues with
# whatever the test project already has (its volumes: a trained bundle); the up time is then
# not a cold one.
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD

export COMPOSE_BAKE=false            # Compose's own builder (works without buildx)
export COMPOSE_PROJECT_NAME=${COMPOSE_TEST_PROJECT:-recsys-e2e}
export COMPOSE_PROFILES=              # the core stack only (the observability profile is validated, not run)
UP_TIMEOUT_S=${UP_TIMEOUT_S:-1800}
REUSE=${TEST_COMPOSE_REUSE:-0}
PY=python3
[ -x "$SRC/.venv/bin/python" ] && PY=$SRC/.venv/bin/python

t_start=$SECONDS
say() { printf '\033[1;36m[test-compose %4ds]\033[0m %s\n' $((SECONDS - t_start)) "$*"; }
fail() { printf '\033[1;31m[test-compose] FAIL:\033[0m %s\n' "$*" >&2; exit 1; }
compose() { docker compose -p "$COMPOSE_PROJECT_NAME" "$@"; }
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# docker timestamps (RFC 3339, UTC) on stdin -> epoch seconds, one a line
epoch() { "$PY" -c 'import sys,datetime as d; [print(d.datetime.fromisoformat(s[:26].rstrip("Z")).replace(tzinfo=d.timezone.utc).timestamp()) for s in sys.stdin.read().split()]'; }

export GATEWAY_HOST_PORT=${GATEWAY_HOST_PORT:-$(free_port)}
export PROMETHEUS_HOST_PORT=${PROMETHEUS_HOST_PORT:-$(free_port)}
export PUBLISH_ADDR=127.0.0.1
# the services close the gateway's connections this often, so it re-resolves their names (step 5)
export RETRIEVAL_MAX_CONNECTION_AGE_S=${RETRIEVAL_MAX_CONNECTION_AGE_S:-10}
export RANKING_MAX_CONNECTION_AGE_S=${RANKING_MAX_CONNECTION_AGE_S:-10}
GW=http://127.0.0.1:$GATEWAY_HOST_PORT
PROM=http://127.0.0.1:$PROMETHEUS_HOST_PORT

# ---------------------------------------------------------------- preflight
docker info >/dev/null 2>&1 || fail "no Docker engine answers (run ../shared/tools/offline-docker.sh or start one)"
docker compose version >/dev/null 2>&1 || fail "docker compose (v2) is not installed"
command -v curl >/dev/null || fail "curl is needed"
git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || fail "$SRC is not a git checkout (the test exports the tree with git ls-files)"
say "compose $(docker compose version --short), project $COMPOSE_PROJECT_NAME, gateway $GW, prometheus $PROM"

# ---------------------------------------------------------------- fresh export + cleanup trap
WORK=$(mktemp -d "${TMPDIR:-/tmp}/recsys-compose-e2e.XXXXXX")
LOG=$(mktemp "${TMPDIR:-/tmp}/test-compose.XXXXXX.log")
STREAM_PID=
dump_logs() {
  echo "---- docker compose ps -a"; compose ps -a || true
  # per container, so each replica of a scaled service (retrieval-1, retrieval-2...) and a killed
  # one have their own lines
  for s in offline retrieval ranking events gateway prometheus redis; do
    for id in $(compose ps -aq "$s" 2>/dev/null); do
      echo "---- logs: $(docker inspect -f '{{.Name}} ({{.State.Status}}, exit {{.State.ExitCode}}, restarts {{.RestartCount}})' "$id" 2>/dev/null | sed 's|^/||') (last 60 lines)"
      docker logs --tail 60 "$id" 2>&1 || true
    done
  done
}
cleanup() {
  rc=$?
  trap - EXIT
  [ -n "$STREAM_PID" ] && kill "$STREAM_PID" 2>/dev/null || true
  [ $rc -ne 0 ] && dump_logs
  say "docker compose down -v"
  compose down -v --remove-orphans --timeout 20 >/dev/null 2>&1 || true
  cd / && rm -rf "$WORK" "$LOG"
  exit $rc
}
trap cleanup EXIT

# tracked (as in the working tree, deleted files left out) + untracked files git does not ignore
git -C "$SRC" ls-files -z -co --exclude-standard |
  while IFS= read -r -d '' f; do { [ -e "$SRC/$f" ] || [ -L "$SRC/$f" ]; } && printf '%s\0' "$f"; done |
  tar -C "$SRC" --null -T - -cf - | tar -C "$WORK" -xf -
cd "$WORK"
[ -d deploy/build/wheels ] || fail "export: deploy/build/wheels/ is missing (its README.md must be tracked)"
if compgen -G 'deploy/build/wheels/*.whl' >/dev/null; then fail "export: a wheel in deploy/build/wheels/ (git-ignored files must not be exported)"; fi
say "fresh export of the working tree: $WORK ($(find . -type f | wc -l) files; no .venv, data, artifacts, wheels)"

compose config -q || fail "docker compose config does not validate"
compose --profile observability config -q || fail "docker compose --profile observability config does not validate"
say "ok: docker compose config and --profile observability config validate"

if [ "$REUSE" = 1 ]; then
  say "TEST_COMPOSE_REUSE=1: keeping the project's containers and volumes"
else
  compose down -v --remove-orphans >/dev/null 2>&1 || true
fi

# ---------------------------------------------------------------- README's compose quickstart
mapfile -t quickstart < <(awk '/<!-- compose-quickstart:begin/ {on=1; next} /<!-- compose-quickstart:end/ {on=0}
                               on && !/^```/ && NF' README.md)
grep -q '^docker compose up ' <<<"$(printf '%s\n' "${quickstart[@]}")" \
  || fail "README.md: no 'docker compose up' line between the compose-quickstart markers"
readme_body=
for line in "${quickstart[@]}"; do
  cmd=${line//127.0.0.1:8000/127.0.0.1:$GATEWAY_HOST_PORT}
  if [ "${TORCH_WHEEL_FETCH:-1}" = 0 ] && [[ $cmd == "make torch-wheel"* ]]; then
    say "README\$ $line   (skipped: TORCH_WHEEL_FETCH=0)"; continue
  fi
  say "README\$ $cmd"
  t0=$SECONDS; t0_epoch=$(date +%s.%N)
  timeout "$UP_TIMEOUT_S" bash -o pipefail -c "$cmd" >"$LOG" 2>&1 \
    || { line_rc=$?; tail -n 60 "$LOG"; fail "README's quickstart line failed (exit $line_rc): $line"; }
  say "  done in $((SECONDS - t0))s"
  case "$cmd" in
    "docker compose up "*)
      up_total_s=$((SECONDS - t0)); up_t0_epoch=$t0_epoch
      first_created=$(docker inspect -f '{{.Created}}' $(compose ps -aq) | epoch | sort -n | head -n1) ;;
    curl*) readme_body=$(cat "$LOG"); say "  $(printf '%.160s' "$readme_body")" ;;
  esac
done
wheel=$(compgen -G "deploy/build/wheels/torch-${TORCH_VERSION:-2.13.0}[-+]*.whl" | head -n1 || true)
say "torch in the offline image from: ${wheel:-index ${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}}"

cold=cold; [ "$REUSE" = 1 ] && cold="NOT cold (TEST_COMPOSE_REUSE=1)"
if [ "$REUSE" != 1 ]; then
  # `up --build` builds every image before it creates the first container
  build=$(awk -v a="$up_t0_epoch" -v b="$first_created" 'BEGIN {printf "%.0f", b - a}')
  build_s=${build}s; up_s=$((up_total_s - build))
else
  build_s="(within up)"; up_s=$up_total_s
fi
offline_s=$(docker inspect -f '{{.State.StartedAt}} {{.State.FinishedAt}}' "$(compose ps -aq offline)" | epoch |
  awk 'NR == 1 {a = $1} NR == 2 {printf "%.0f", $1 - a}')
say "images built in ${build_s}; $cold up (clean volumes -> every service healthy): ${up_s}s; the offline job ran ${offline_s}s"
compose ps

# ---------------------------------------------------------------- request helpers
# rec METHOD USER K [EXTRA_JSON] -> sets BODY, CODE, TIME_MS
rec() {
  local method=$1 user=$2 k=$3 extra=${4:-} out
  if [ "$method" = GET ]; then
    out=$(curl -s -m 10 -o /tmp/test-compose-body.$$ -w '%{http_code} %{time_total}' \
      --get --data-urlencode "user_id=$user" --data-urlencode "k=$k" "$GW/recommend") || out="000 10"
  else
    out=$(curl -s -m 10 -o /tmp/test-compose-body.$$ -w '%{http_code} %{time_total}' -H 'content-type: application/json' \
      -d "{\"user_id\": \"$user\", \"k\": $k${extra:+, $extra}}" "$GW/recommend") || out="000 10"
  fi
  CODE=${out%% *}
  TIME_MS=$("$PY" -c "print(round(float('${out##* }') * 1000, 1))")
  BODY=$(cat /tmp/test-compose-body.$$ 2>/dev/null || true)
  rm -f /tmp/test-compose-body.$$
}
# jq-free field access: field EXPR (python expression over `b`, the parsed body)
field() { printf '%s' "$BODY" | "$PY" -c "import json,sys; b=json.load(sys.stdin); v=($1); print('null' if v is None else v)"; }
# A fresh known user per request, so the response cache never answers for a probe (MovieLens-100K
# has users 1..943; after 943 it starts again at 1, long past the cache TTL).
NEXT_USER=100
next_user() { NEXT_USER=$((NEXT_USER % 943 + 1)); USER_ID=$NEXT_USER; }

expect_full() {  # a full answer: 200, k items, no fallback
  local what=$1 k=$2
  [ "$CODE" = 200 ] || fail "$what: HTTP $CODE: $BODY"
  [ "$(field 'len(b["items"])')" = "$k" ] || fail "$what: expected $k items: $BODY"
  [ "$(field 'b["fallback"]')" = null ] || fail "$what: unexpected fallback: $BODY"
  [ -n "$(field 'b["model_version"]')" ] || fail "$what: no model_version: $BODY"
  [ "$(field 'all(x["score"] >= y["score"] for x, y in zip(b["items"], b["items"][1:]))')" = True ] \
    || fail "$what: items not sorted by score: $BODY"
}

# ---------------------------------------------------------------- 1. recommendations
BODY=$readme_body
[ "$(field 'len(b["items"])')" = 10 ] || fail "README's curl line: expected 10 items: $BODY"
say "ok: README's curl line -> 10 items for user $(field 'b["user_id"]'), fallback $(field 'b["fallback"]')"

next_user; rec GET "$USER_ID" 10
expect_full "known user $USER_ID (GET)" 10
say "ok: known user $USER_ID -> 10 ranked items in ${TIME_MS} ms, model $(field 'b["model_version"]'), top: $(field 'b["items"][0].get("title") or b["items"][0]["item_id"]')"

rec GET "e2e-unknown-$RANDOM$RANDOM" 10
expect_full "unknown user (GET)" 10
say "ok: unknown user -> 10 cold-start items in ${TIME_MS} ms"

next_user; rec GET "$USER_ID" 10
excluded=$(field '",".join(str(i["item_id"]) for i in b["items"][:3])')
next_user_excl=$USER_ID
rec POST "$next_user_excl" 10 "\"exclude_item_ids\": [$excluded]"
expect_full "known user $next_user_excl (POST with exclusions)" 10
[ "$(field "not ({${excluded}} & {i['item_id'] for i in b['items']})")" = True ] || fail "excluded ids $excluded came back: $BODY"
say "ok: POST with exclude_item_ids [$excluded] -> 10 items, none excluded, ${TIME_MS} ms"

rec GET "$USER_ID" 0
[ "$CODE" = 422 ] || fail "k=0: expected HTTP 422, got $CODE: $BODY"
say "ok: k=0 -> 422 ($(printf '%.120s' "$BODY"))"

# ---------------------------------------------------------------- 1b. events change the next answer
next_user; clicker=$USER_ID
rec GET "$clicker" 10; rec GET "$clicker" 10   # the second is a cache hit: the click must get past it
[ "$(field 'b["cached"]')" = True ] || fail "events: the second answer for $clicker was not cached: $BODY"
clicked=$(field 'b["items"][0]["item_id"]')
ev_out=$(curl -s -m 10 -w ' %{http_code}' -H 'content-type: application/json' \
  -d "{\"events\": [{\"event_id\": \"compose-$RANDOM$RANDOM\", \"user_id\": \"$clicker\", \"item_id\": $clicked, \"type\": \"click\"}]}" \
  "$GW/events") || ev_out="curl failed 000"
[ "${ev_out##* }" = 202 ] || fail "POST /events: expected 202, got: $ev_out"
t0_ms=$("$PY" -c 'import time; print(int(time.time() * 1000))')
deadline=$((SECONDS + 10))
while :; do
  rec GET "$clicker" 10
  [ "$CODE" = 200 ] || fail "events: HTTP $CODE: $BODY"
  [ "$(field "all(i['item_id'] != $clicked for i in b['items'])")" = True ] && break
  [ $SECONDS -lt $deadline ] || fail "events: item $clicked still in $clicker's answer 10 s after the click: $BODY"
  sleep 0.05
done
fresh_ms=$(( $("$PY" -c 'import time; print(int(time.time() * 1000))') - t0_ms ))
say "ok: POST /events click on $clicked -> 202 (${ev_out% *}); the next answers dropped it after ~${fresh_ms} ms (cache hit bypassed)"

# ---------------------------------------------------------------- 1c. shipping a model (README's compose-ship lines)
mapfile -t ship < <(awk '/<!-- compose-ship:begin/ {on=1; next} /<!-- compose-ship:end/ {on=0} on && !/^```/ && NF' README.md)
[ ${#ship[@]} -ge 4 ] || fail "README.md: no compose-ship lines between the compose-ship markers"
next_user; rec GET "$USER_ID" 10; old_version=$(field 'b["model_version"]'); new_version=
# versions_of N TAG -> VERSIONS: "version variant" of N fresh unknown users (no cache entry can answer)
versions_of() {
  VERSIONS=
  for i in $(seq 1 "$1"); do
    rec GET "ship-$2-$i-$RANDOM$RANDOM" 5
    [ "$CODE" = 200 ] || fail "shipping: HTTP $CODE: $BODY"
    VERSIONS+="$(field 'b["model_version"] + " " + b["variant"]')"$'\n'
  done
}
wait_all_on() {  # wait_all_on VERSION WHAT: within 10 s, 20 fresh users all answered by VERSION
  local deadline=$((SECONDS + 10))
  until versions_of 20 "$2" && [ "$(printf '%s' "$VERSIONS" | awk -v v="$1" '$1 != v' | wc -l)" = 0 ]; do
    [ $SECONDS -lt $deadline ] || fail "shipping ($2): not every answer on $1 after 10 s: $(printf '%s' "$VERSIONS" | sort | uniq -c | tr '\n' ' ')"
    sleep 0.2
  done
}
for line in "${ship[@]}"; do
  cmd=${line//<new>/$new_version}
  say "README\$ $cmd"
  t0=$SECONDS
  timeout "$UP_TIMEOUT_S" bash -o pipefail -c "$cmd" >"$LOG" 2>&1 \
    || { line_rc=$?; tail -n 40 "$LOG"; fail "README's shipping line failed (exit $line_rc): $line"; }
  say "  done in $((SECONDS - t0))s: $(tail -n 1 "$LOG" | cut -c1-160)"
  case "$cmd" in
    *"models run --no-publish"*)
      new_version=$(compose run --rm --no-deps offline python -c "from common.deployments import Deployments as D
d = D('artifacts'); cur = d.pointer('current'); print([b.version for b in d.versions() if b.version != cur][-1])" | tail -n 1)
      [ -n "$new_version" ] && [ "$new_version" != "$old_version" ] || fail "shipping: no candidate beside $old_version"
      next_user; rec GET "$USER_ID" 10
      [ "$(field 'b["model_version"]')" = "$old_version" ] || fail "shipping: the candidate is served already: $BODY" ;;
    *"models canary"*)
      deadline=$((SECONDS + 10))
      until versions_of 300 canary && printf '%s' "$VERSIONS" | grep -q "^$new_version canary"; do
        [ $SECONDS -lt $deadline ] || fail "shipping: no user on the canary $new_version after 10 s"
      done
      on=$(printf '%s' "$VERSIONS" | grep -c "^$new_version canary" || true)
      mixed=$(printf '%s' "$VERSIONS" | awk -v v="$new_version" '($1 == v) != ($2 ~ /canary/)' | wc -l)
      [ "$mixed" = 0 ] || fail "shipping: answers whose version and variant disagree: $VERSIONS"
      [ "$on" -ge 12 ] && [ "$on" -le 50 ] || fail "shipping: $on of 300 users on a 10 % canary"
      say "ok: canary $new_version at 10 % -> $on of 300 fresh users on it, each answer's variant says canary" ;;
    *"models promote"*)
      wait_all_on "$new_version" promote; say "ok: promoted -> every fresh user on $new_version" ;;
    *"models rollback"*)
      wait_all_on "$old_version" rollback; say "ok: rolled back -> every fresh user on $old_version again" ;;
  esac
done

# ---------------------------------------------------------------- 2. prometheus targets
deadline=$((SECONDS + 60))
while :; do
  targets=$(curl -s -m 5 "$PROM/api/v1/targets?state=active" || true)
  summary=$(printf '%s' "$targets" | "$PY" -c '
import json, sys
try:
    t = json.load(sys.stdin)["data"]["activeTargets"]
except Exception:
    print("0 none"); sys.exit()
down = [x["labels"]["job"] + ":" + x["health"] for x in t if x["health"] != "up"]
print(len(t), " ".join(sorted(x["labels"]["job"] + "=" + x["health"] for x in t)), "DOWN" if down or not t else "")' )
  # targets come from DNS (dns_sd_configs): a job whose name did not resolve yet has none
  missing=
  for job in gateway retrieval ranking events; do
    case "$summary" in *"$job=up"*) ;; *) missing+=" $job" ;; esac
  done
  case "$summary" in
    *DOWN*|"0 "*) ;;
    *) [ -z "$missing" ] && break ;;
  esac
  [ $SECONDS -lt $deadline ] || fail "prometheus targets not all up after 60 s (no up target for:${missing:- -}): $summary"
  sleep 2
done
say "ok: prometheus targets: $summary"

# ---------------------------------------------------------------- 3. ranking stopped
compose stop ranking >/dev/null
for i in 1 2 3 4 5; do
  next_user; rec GET "$USER_ID" 10
  [ "$CODE" = 200 ] || fail "ranking stopped: HTTP $CODE: $BODY"
  [ "$(field 'b["fallback"]')" = ranking_unavailable ] || fail "ranking stopped: expected fallback ranking_unavailable: $BODY"
  [ "$(field 'len(b["items"])')" = 10 ] || fail "ranking stopped: expected 10 items: $BODY"
  times+=("$TIME_MS")
done
say "ok: ranking stopped -> 5/5 answered 200 with fallback=ranking_unavailable (ms: ${times[*]})"
unset times

# `up --no-deps` starts the stopped container alone (`compose start` would also re-run the
# finished offline job, a dependency of ranking)
compose up -d --no-deps ranking >/dev/null 2>&1
deadline=$((SECONDS + 180))
t0=$SECONDS
while :; do
  next_user; rec GET "$USER_ID" 10
  [ "$CODE" = 200 ] || fail "ranking restarting: HTTP $CODE: $BODY"
  [ "$(field 'b["fallback"]')" = null ] && break
  [ $SECONDS -lt $deadline ] || fail "ranking restarted but answers still fall back after 180 s: $BODY"
  sleep 1
done
expect_full "after ranking restart" 10
say "ok: ranking started again -> full answers after $((SECONDS - t0))s"

# ---------------------------------------------------------------- 4. retrieval paused
compose pause retrieval >/dev/null
for i in 1 2 3 4 5; do
  next_user; rec GET "$USER_ID" 10
  [ "$CODE" = 200 ] || fail "retrieval paused: HTTP $CODE: $BODY"
  fb=$(field 'b["fallback"]')
  [ "$fb" != null ] || fail "retrieval paused: expected a fallback: $BODY"
  [ "$(field 'len(b["items"])')" = 10 ] || fail "retrieval paused: expected 10 items: $BODY"
  # the gateway's whole-request deadline is GATEWAY_REQUEST_TIMEOUT_MS (100 ms); allow 100 ms
  # for curl, the published port's proxy and a loaded 2-core machine
  "$PY" -c "import sys; sys.exit(0 if $TIME_MS <= ${GATEWAY_REQUEST_TIMEOUT_MS:-100} + 100 else 1)" \
    || fail "retrieval paused: answer took ${TIME_MS} ms (deadline ${GATEWAY_REQUEST_TIMEOUT_MS:-100} ms)"
  times+=("$TIME_MS"); reasons+=("$fb")
done
say "ok: retrieval paused -> 5/5 answered 200 within the deadline, fallback=${reasons[*]} (ms: ${times[*]})"
unset times reasons

compose unpause retrieval >/dev/null
deadline=$((SECONDS + 120))
t0=$SECONDS
while :; do
  next_user; rec GET "$USER_ID" 10
  [ "$CODE" = 200 ] || fail "retrieval unpaused: HTTP $CODE: $BODY"
  [ "$(field 'b["fallback"]')" = null ] && break
  [ $SECONDS -lt $deadline ] || fail "retrieval unpaused but answers still fall back after 120 s: $BODY"
  sleep 0.5
done
expect_full "after retrieval unpause" 10
say "ok: retrieval unpaused -> full answers after $((SECONDS - t0))s"

# ---------------------------------------------------------------- 5. replicas
# replica_calls SERVICE INDEX -> OK calls of the service's method answered by that replica
# (its own /metrics, read inside the container: the metrics ports are not published)
replica_calls() {
  local port method
  case $1 in
    retrieval) port=9101 method=/recsys.v1.RetrievalService/Retrieve ;;
    ranking) port=9102 method=/recsys.v1.RankingService/Rank ;;
  esac
  compose exec -T --index "$2" "$1" python -c '
import sys, urllib.request
port, method = sys.argv[1], sys.argv[2]
short = method.rsplit("/", 1)[-1]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
n = 0.0
for line in text.splitlines():
    if line.startswith("recsys_grpc_server_handling_seconds_count{"):
        labels, value = line.rsplit(" ", 1)
        # the method label is the method name ("Retrieve"); a full path is accepted too
        if (f"method=\"{method}\"" in labels or f"method=\"{short}\"" in labels) \
                and "code=\"OK\"" in labels:
            n += float(value)
print(int(n))' "$port" "$method" 2>/dev/null || echo "?"
}
REPLICAS=("retrieval 1" "retrieval 2" "ranking 1" "ranking 2")
# all_calls -> CALLS: "n1 n2 n3 n4" in the order of REPLICAS
all_calls() { CALLS=; local r; for r in "${REPLICAS[@]}"; do CALLS+="$(replica_calls $r) "; done; }
# split BASE NOW -> SPLIT: "retrieval 1: 57 calls, retrieval 2: 43 calls; ranking 1: ...", MINCALLS:
# the fewest calls of a replica in between (-1: a replica's metrics could not be read)
split() {
  local -a a b; local i d
  read -ra a <<<"$1"; read -ra b <<<"$2"
  SPLIT=; MINCALLS=
  for i in 0 1 2 3; do
    if [[ ${a[i]-} =~ ^[0-9]+$ && ${b[i]-} =~ ^[0-9]+$ ]]; then d=$((b[i] - a[i])); else d="?"; fi
    if [ "$d" = "?" ]; then MINCALLS=-1
    elif [ -z "$MINCALLS" ] || { [ "$MINCALLS" != -1 ] && [ "$d" -lt "$MINCALLS" ]; }; then MINCALLS=$d; fi
    SPLIT+="${REPLICAS[i]}: $d calls"; case $i in 0|2) SPLIT+=", " ;; 1) SPLIT+="; " ;; esac
  done
}
replica_id() {  # replica_id SERVICE N -> container id of replica N
  docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=$1" --filter "label=com.docker.compose.container-number=$2"
}

gw_before=$(docker inspect -f '{{.Id}} {{.State.StartedAt}} {{.RestartCount}}' "$(compose ps -q gateway)")
first_before="$(replica_id retrieval 1) $(replica_id ranking 1)"
for s in retrieval ranking; do
  var=$(tr a-z A-Z <<<"$s")_MAX_CONNECTION_AGE_S
  docker inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$(replica_id "$s" 1)" | grep -qx "$var=${!var}" \
    || fail "replicas: $s does not have $var=${!var} (docker-compose.yml must pass it through)"
done
t_scale=$SECONDS; t0=$SECONDS
timeout 300 docker compose -p "$COMPOSE_PROJECT_NAME" up -d --no-deps --wait --scale retrieval=2 --scale ranking=2 \
  retrieval ranking >"$LOG" 2>&1 || { tail -n 40 "$LOG"; fail "replicas: up --scale retrieval=2 --scale ranking=2 failed"; }
scale_s=$((SECONDS - t0))
[ "$(docker inspect -f '{{.Id}} {{.State.StartedAt}} {{.RestartCount}}' "$(compose ps -q gateway)")" = "$gw_before" ] \
  || fail "replicas: scaling retrieval and ranking recreated or restarted the gateway"
[ "$(replica_id retrieval 1) $(replica_id ranking 1)" = "$first_before" ] || fail "replicas: scaling recreated replica 1"
for s in retrieval ranking; do
  n=$(compose ps -q --status running "$s" | wc -l)
  [ "$n" = 2 ] || fail "replicas: $n running $s containers, expected 2"
done
addrs=$(compose exec -T gateway python -c 'import socket
for n, p in (("retrieval", 50051), ("ranking", 50052)):
    print(n, "->", " ".join(sorted({a[4][0] for a in socket.getaddrinfo(n, p, proto=socket.IPPROTO_TCP)})), end="; ")' || true)
say "ok: up --scale retrieval=2 --scale ranking=2 (--no-deps --wait) in ${scale_s}s, both healthy; gateway not recreated or restarted; Docker DNS in the gateway: ${addrs%; }"

# the running gateway finds the new replicas when their connections reach the max age
all_calls; base=$CALLS
deadline=$((SECONDS + 90)); sent=0
while :; do
  for i in $(seq 1 10); do
    next_user; rec GET "$USER_ID" 10
    [ "$CODE" = 200 ] || fail "replicas: HTTP $CODE: $BODY"
    sent=$((sent + 1))
  done
  all_calls; split "$base" "$CALLS"
  [ "$MINCALLS" -gt 0 ] && break
  # replica 1 took calls all along: none counted means the metrics are not read right
  read -ra now <<<"$CALLS"; read -ra was <<<"$base"
  [ "${now[0]}" != "${was[0]}" ] && [ "${now[2]}" != "${was[2]}" ] \
    || fail "replicas: replica 1's metrics count none of $sent calls: $SPLIT"
  [ $SECONDS -lt $deadline ] || fail "replicas: not every replica answered within 90 s of the scale-up ($sent requests): $SPLIT"
done
say "ok: every replica answers calls $((SECONDS - t_scale))s after \`up --scale\` began ($sent requests since it returned, connection age ${RETRIEVAL_MAX_CONNECTION_AGE_S}/${RANKING_MAX_CONNECTION_AGE_S} s, gateway not restarted): $SPLIT"

all_calls; base=$CALLS
for i in $(seq 1 40); do
  next_user; rec GET "$USER_ID" 10
  [ "$CODE" = 200 ] || fail "replicas: HTTP $CODE: $BODY"
done
all_calls; split "$base" "$CALLS"
[ "$MINCALLS" -ge 8 ] || fail "replicas: 40 requests not spread over both replicas of each service (round_robin): $SPLIT"
say "ok: round-robin over the next 40 requests: $SPLIT"

# Prometheus (dns_sd_configs) scrapes each replica as a target of its own
deadline=$((SECONDS + 30))
while :; do
  per_job=$(curl -s -m 5 "$PROM/api/v1/targets?state=active" | "$PY" -c '
import collections, json, sys
try:
    t = json.load(sys.stdin)["data"]["activeTargets"]
except Exception:
    t = []
up = collections.Counter(x["labels"]["job"] for x in t if x["health"] == "up")
print(" ".join(f"{j}={up[j]}" for j in ("retrieval", "ranking")))' || true)
  [ "$per_job" = "retrieval=2 ranking=2" ] && break
  [ $SECONDS -lt $deadline ] || fail "replicas: prometheus does not scrape 2 up targets each after 30 s: $per_job"
  sleep 2
done
say "ok: prometheus scrapes every replica (up targets: $per_job)"

# SIGKILL replica 2 of both amid a steady stream of requests
users=(); for i in $(seq 1 120); do next_user; users+=("$USER_ID"); done
STREAM=$WORK/stream.tsv; : >"$STREAM"
( for u in "${users[@]}"; do
    ts=$(date +%s.%N)
    out=$(curl -s -m 5 -w '\t%{http_code}\t%{time_total}' --get --data-urlencode "user_id=$u" --data-urlencode k=10 \
      "$GW/recommend" || true)
    printf '%s\t%s\n' "$ts" "$out" >>"$STREAM"
    sleep 0.1
  done ) &
STREAM_PID=$!
until [ "$(wc -l <"$STREAM")" -ge 30 ]; do sleep 0.1; kill -0 "$STREAM_PID" 2>/dev/null || break; done
victims="$(replica_id retrieval 2) $(replica_id ranking 2)"
[ "$(wc -w <<<"$victims")" = 2 ] || fail "replicas: no replica 2 of retrieval and ranking to kill: $victims"
t_kill=$(date +%s.%N)
docker kill $victims >/dev/null
t_killed=$(date +%s.%N)
wait "$STREAM_PID" || true
STREAM_PID=
restarted=$(docker inspect -f '{{.Name}}: {{.State.Status}}, restarts {{.RestartCount}}' $victims | sed 's|^/||' | tr '\n' ' ')
kill_report=$("$PY" - "$STREAM" "$t_kill" "$t_killed" <<'EOF'
import collections, json, sys
path, t_kill, t_killed = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
rows = []
for line in open(path):
    ts, body, code, secs = line.rstrip("\n").rsplit("\t", 3) if line.count("\t") >= 3 else (line.split("\t")[0], "", "000", "0")
    try:
        b = json.loads(body)
    except ValueError:
        b = {}
    fb = b.get("fallback", "?") if code == "200" else "-"
    n_items = len(b.get("items", [])) if code == "200" else 0
    rows.append((float(ts), code, fb, n_items, float(secs)))
codes = collections.Counter(r[1] for r in rows)
before = sum(1 for r in rows if r[0] < t_kill)
after = [r for r in rows if r[0] >= t_killed]
rungs = collections.Counter(str(r[2]) if r[2] is not None else "none" for r in rows if r[0] >= t_kill)
late = [r for r in rows if r[0] >= t_killed + 3.0]
late_bad = [r for r in late if r[1] != "200" or r[2] is not None or r[3] != 10]
not_full = [r for r in rows if r[0] >= t_kill and (r[2] is not None or r[1] != "200")]
last_nf = f"{max(r[0] for r in not_full) - t_killed:.2f} s" if not_full else "none"
short = [r for r in rows if r[1] == "200" and r[3] != 10]  # every 200 carries k items, fallback or not
ok = codes.get("200", 0) == len(rows) and not short and not late_bad and len(after) >= 50 and len(late) >= 20
print("OK" if ok else "BAD",
      f"{len(rows)} requests ({before} before the kill, {len(after)} after, {len(late)} from 3 s after it):",
      " ".join(f"HTTP {c} x{n}" for c, n in sorted(codes.items())),
      f"({sum(n for c, n in codes.items() if c.startswith('5'))} 5xx, {codes.get('000', 0)} without answer);",
      "fallback rungs from the kill on: " + " ".join(f"{k} x{n}" for k, n in rungs.most_common()) + ";",
      f"last non-full answer: {last_nf} after the kill; from 3 s on: {len(late) - len(late_bad)}/{len(late)} full;",
      f"max latency {max(r[4] for r in rows) * 1000:.0f} ms" + (f"; {len(short)} answers without 10 items" if short else ""))
EOF
)
case "$kill_report" in
  OK*) say "ok: docker kill (SIGKILL) retrieval-2 + ranking-2 amid the stream: ${kill_report#OK }" ;;
  *) fail "replicas: killing replica 2: ${kill_report#BAD }" ;;
esac
say "  killed replicas afterwards: ${restarted% }"

# ---------------------------------------------------------------- sizes + teardown
say "image sizes:"
docker image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "^recsys-(gateway|retrieval|ranking|events|offline):${RECSYS_TAG:-latest} " | sort | sed 's/^/  /' || true
say "timings: build ${build_s}, $cold up ${up_s}s (offline job ${offline_s}s)"

trap 'cd / && rm -rf "$WORK" "$LOG"' EXIT
compose down -v --remove-orphans --timeout 20 >/dev/null
left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
vols=$(docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
nets=$(docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
[ -z "$left$vols$nets" ] || fail "down -v left containers/volumes/networks: $left $vols $nets"
say "ok: docker compose down -v left nothing behind"
say "PASSED in $((SECONDS - t_start))s"
