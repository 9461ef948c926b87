#!/usr/bin/env bash
# Run a command with the machine's memory sampled beside it (`free -m` every 5 s), as issue 32's CI runs were
# measured: prints the largest "used" figure, and any OOM kill the kernel logged during the run.
#   bash tools/watch_memory.sh LOG -- COMMAND...     (the samples go to LOG; the command's output passes through)
set -uo pipefail
log=$1; shift
[ "${1:-}" = "--" ] && shift
oom_before=$(dmesg 2>/dev/null | grep -c "Out of memory" || true)
( while :; do echo "$(date +%T) $(free -m | awk '/^Mem:/ {print $3, $2}')"; sleep 5; done ) > "$log" &
sampler=$!
start=$SECONDS
"$@"
code=$?
kill "$sampler"
oom_after=$(dmesg 2>/dev/null | grep -c "Out of memory" || true)
echo "watch_memory: exit $code in $((SECONDS - start)) s; most used $(sort -k2 -n "$log" | tail -1 | awk '{print $2 " of " $3}') MiB (free -m, every 5 s); OOM kills during the run: $((oom_after - oom_before))"
exit $code
