#!/usr/bin/env bash
# The benchmark suite's peers (bench/run calls this first): Debian packages installed when
# missing, and the venv. Usage: scripts/bench-deps.sh
. "$(dirname "$0")/_env.sh"
ensure_debs iperf3:iperf3 socat:socat ncat:ncat microsocks:microsocks ss:iproute2 go:golang-go taskset:util-linux
ensure_venv "[dev]"
