#!/usr/bin/env bash
# Coverage-guided fuzzing of wirecat's parsers with atheris (libFuzzer for Python).
#
#   fuzz/run.sh                  # every target, 30 s each
#   fuzz/run.sh lines chat       # some targets
#   FUZZ_TIME=300 fuzz/run.sh    # longer runs
#
# Installs atheris into the project's venv (.venv, or $VENV) if missing. Corpora live in
# fuzz/corpus/<target>/ (kept between runs, not committed); crashes are written to
# fuzz/crashes/. Not part of the test command: the Hypothesis targets in
# tests/test_fuzz_parsers.py are.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="${VENV:-$root/.venv}"
python="$venv/bin/python"
seconds="${FUZZ_TIME:-30}"

if [[ ! -x "$python" ]]; then
    echo "run.sh: no virtualenv at $venv (set VENV=...)" >&2
    exit 64
fi
if ! "$python" -c "import atheris" 2>/dev/null; then
    echo "run.sh: installing atheris into $venv" >&2
    "$python" -m pip install --quiet atheris
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
    targets=(endpoints lines chat users proxy socks files websocket)
fi

mkdir -p "$here/crashes"
status=0
for target in "${targets[@]}"; do
    script="$here/fuzz_${target}.py"
    if [[ ! -f "$script" ]]; then
        echo "run.sh: unknown target '$target' (have: endpoints lines chat users proxy socks files websocket)" >&2
        exit 64
    fi
    corpus="$here/corpus/$target"
    mkdir -p "$corpus"
    echo "== fuzz_${target}: ${seconds}s" >&2
    if ! "$python" "$script" "$corpus" \
        -max_total_time="$seconds" \
        -max_len=4096 \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -artifact_prefix="$here/crashes/${target}-" \
        -print_final_stats=1; then
        echo "run.sh: fuzz_${target} found a failure (see fuzz/crashes/)" >&2
        status=1
    fi
done
exit "$status"
