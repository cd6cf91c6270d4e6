#!/usr/bin/env bash
# Run the whole test suite: installs the real peers (nc, ncat, socat) and the dev tools, then
# lint, type checks and pytest. Extra arguments go to pytest, e.g. scripts/test.sh -k chat
. "$(dirname "$0")/_env.sh"
ensure_debs nc:netcat-openbsd ncat:ncat socat:socat openssl:openssl haproxy:haproxy curl:curl microsocks:microsocks ss:iproute2 redis-server:redis-server chromium:chromium node:nodejs npm:npm
ensure_venv "[dev]"
# Node peers (the npm package ws) for the WebSocket interop tests and benchmarks.
[ -d "$ROOT/tests/node/node_modules/ws" ] || (cd "$ROOT/tests/node" && npm install --no-audit --no-fund --silent)
cd "$ROOT"
echo "== ruff check"; "$VENV/bin/ruff" check src tests bench examples
echo "== ruff format --check"; "$VENV/bin/ruff" format --check src tests bench examples
echo "== mypy --strict src"; "$VENV/bin/mypy" src
echo "== mkdocs build --strict"; "$VENV/bin/mkdocs" build --strict -q
echo "== pytest"
exec "$VENV/bin/python" -m pytest "$@"
