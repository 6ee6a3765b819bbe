#!/usr/bin/env bash
# Stop the one-node SLURM started by slurm/dev/start.sh (jobs are cancelled first).
set -uo pipefail
STATE=${HARNESS_SLURM_DEV:-/tmp/lars-slurm-dev}
export SLURM_CONF=$STATE/slurm.conf
[[ -f $SLURM_CONF ]] || exit 0
scancel --full --quiet --user="$(id -un)" 2>/dev/null
# Until the jobs have gone: a job step outlives the daemons that started it and would keep
# training (and holding its files) after this script has said "stopped".
for _ in $(seq 60); do [[ -z $(squeue -h 2>/dev/null) ]] && break; sleep 0.5; done
for pidfile in "$STATE/slurmd.pid" "$STATE/slurmctld.pid"; do
    pid=$(cat "$pidfile" 2>/dev/null) || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
done
if [[ -f $STATE/munged.ours ]]; then
    kill "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null
    rm -f "$STATE/munged.ours"
fi
echo "slurm-dev: stopped (state and logs kept in $STATE)"
