#!/usr/bin/env bash
# Run `wirecat serve` on loopback with its default services (installs wirecat into .venv first).
# Extra arguments go to `wirecat serve`, e.g. scripts/serve.sh --no-chat -v
. "$(dirname "$0")/_env.sh"
ensure_venv "[tls-tools]"
exec "$VENV/bin/wirecat" serve "$@"
