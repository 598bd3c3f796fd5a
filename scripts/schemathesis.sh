#!/usr/bin/env bash
# Property-based API testing: schemathesis against the running binary, with a valid token, over
# every operation of /api/openapi.json, positive and negative data. Fails on any finding.
# Usage: scripts/schemathesis.sh [--binary PATH] [--max-examples N]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/debug/customer360
max_examples=30
while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin=$2; shift 2 ;;
    --max-examples) max_examples=$2; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
[ -x "$bin" ] || { echo "no binary at $bin (cargo build first)" >&2; exit 2; }
bash scripts/setup-python.sh >/dev/null
dir=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA_DIR="$dir" PORT="$port" RUST_LOG=warn RATE_LIMIT_PER_MINUTE=1000000 TOKEN_RATE_LIMIT_PER_MINUTE=1000000 \
  "$bin" serve >"$dir/server.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
token=$(python3 - "$dir" "$port" <<'PY'
import json, sys, urllib.request
d, port = sys.argv[1], sys.argv[2]
s = json.load(open(f"{d}/secrets.json"))["secrets"]["local-dev-client"][0]["value"]
c = json.loads(s)
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/auth/token", method="POST",
    data=json.dumps({"clientId": c["clientId"], "clientSecret": c["clientSecret"]}).encode(),
    headers={"content-type": "application/json"})
print(json.load(urllib.request.urlopen(req))["access_token"])
PY
)
.venv/bin/schemathesis run "http://127.0.0.1:$port/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,coverage,fuzzing \
  --header "Authorization: Bearer $token" \
  --max-examples "$max_examples" --mode all \
  --workers 2 \
  --request-timeout 10 \
  --suppress-health-check all
if grep '"level":"ERROR"' "$dir/server.log" | grep -q '"target":"customer360'; then
  echo "server logged errors:" >&2; grep '"level":"ERROR"' "$dir/server.log" | head -5 >&2; exit 1
fi
