#!/usr/bin/env bash
# Real single-node SLURM for local tests / CI (Debian 12, root, no systemd needed).
#
# Usage: scripts/slurm-local.sh {install|start|stop|status}
#   install  apt-get install slurm-wlm + munge (skipped when already installed)
#   start    write /etc/slurm/slurm.conf for this host, start munged, slurmctld,
#            slurmd, wait for the node to be idle, run an srun smoke test.
#            Idempotent: if the cluster already runs, it reports and exits 0.
#   stop     scancel all jobs, TERM the daemons by their pid files, wait (bounded).
#   status   exit 0 and print the sinfo line when running, exit 1 otherwise.
#
# Environment:
#   SLURM_PARTITION      partition name (default: debug)
#   SLURM_START_TIMEOUT  seconds to wait for the node to become idle (default: 30)
#   SLURM_LOCAL_FAKE_GPUS  placeholder GPUs (gres gpu) the node advertises, 1..4 (default: 2)
#
# Recipe: shared/reference/slurm-single-node.md (no cgroups, no accounting daemon;
# use `slurm-status-command: squeue` in the Snakemake profile).
set -euo pipefail

PARTITION="${SLURM_PARTITION:-debug}"
START_TIMEOUT="${SLURM_START_TIMEOUT:-30}"
NODE="$(hostname -s)"
FAKE_GPUS="${SLURM_LOCAL_FAKE_GPUS:-2}"  # placeholder GPUs the test node advertises (see write_conf)

CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
CTLD_SPOOL=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
CTLD_LOG="$LOG_DIR/slurmctld.log"
SLURMD_LOG="$LOG_DIR/slurmd.log"
MUNGE_RUN=/run/munge
MUNGE_PID="$MUNGE_RUN/munged.pid"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_LOG=/var/log/munge/munged.log

log() { printf 'slurm-local: %s\n' "$*" >&2; }

# die MESSAGE [LOGFILE...]: print an error and the tail of the given logs, exit 1.
die() {
    local msg="$1"
    shift
    log "ERROR: $msg"
    local f
    for f in "$@"; do
        if [[ -r "$f" ]]; then
            printf -- '--- last 25 lines of %s ---\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
    exit 1
}

need_root() {
    [[ "$(id -u)" -eq 0 ]] || die "must run as root"
}

# pid_from_file FILE: print the PID stored in FILE (empty when absent/invalid).
pid_from_file() {
    local pid=""
    if [[ -r "$1" ]]; then
        read -r pid <"$1" || true
    fi
    [[ "$pid" =~ ^[0-9]+$ ]] && printf '%s\n' "$pid"
    return 0
}

# is_alive PID COMM: PID exists, its comm is COMM and it is not a zombie.
is_alive() {
    local pid="$1" comm="$2" actual state
    [[ -n "$pid" && -r "/proc/$pid/comm" ]] || return 1
    read -r actual <"/proc/$pid/comm" 2>/dev/null || return 1
    [[ "$actual" == "$comm" ]] || return 1
    state="$(awk '/^State:/ {print $2; exit}' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != Z && "$state" != X ]]
}

# daemon_alive PIDFILE COMM
daemon_alive() {
    is_alive "$(pid_from_file "$1")" "$2"
}

# stop_daemon PIDFILE COMM: TERM, wait up to 15 s (zombies count as gone), then KILL.
stop_daemon() {
    local pidfile="$1" comm="$2" pid i
    pid="$(pid_from_file "$pidfile")"
    if [[ -z "$pid" ]]; then
        log "$comm: no pid file ($pidfile), nothing to stop"
        return 0
    fi
    if ! is_alive "$pid" "$comm"; then
        log "$comm: pid $pid from $pidfile is not a running $comm (stale pid file)"
        rm -f "$pidfile"
        return 0
    fi
    log "$comm: sending TERM to pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
        is_alive "$pid" "$comm" || break
        sleep 0.1
    done
    if is_alive "$pid" "$comm"; then
        log "$comm: pid $pid still alive after 15 s, sending KILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            is_alive "$pid" "$comm" || break
            sleep 0.1
        done
        is_alive "$pid" "$comm" && die "$comm: pid $pid did not exit"
    fi
    rm -f "$pidfile"
    log "$comm: stopped"
}

# wait_daemon PIDFILE COMM: wait up to 10 s for a daemonised COMM to write its pid file.
wait_daemon() {
    local i
    for ((i = 0; i < 100; i++)); do
        daemon_alive "$1" "$2" && return 0
        sleep 0.1
    done
    return 1
}

# node_state: the node's state as sinfo reports it (empty on failure).
node_state() {
    timeout 10 sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true
}

# running: slurmctld and slurmd alive and the node usable.
running() {
    daemon_alive "$CTLD_PID" slurmctld || return 1
    daemon_alive "$SLURMD_PID" slurmd || return 1
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

sinfo_line() {
    timeout 10 sinfo -h -n "$NODE" -o '%P %a %l %D %T %N %c %m' 2>/dev/null || true
}

cmd_install() {
    need_root
    if command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 &&
        command -v munged >/dev/null 2>&1; then
        log "slurm-wlm and munge already installed ($(slurmctld -V 2>/dev/null || echo '?')), skipping"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends slurm-wlm munge ||
        die "apt-get install slurm-wlm munge failed"
    log "installed $(slurmctld -V)"
}

write_conf() {
    local cpus mem_total_mb real_mem
    cpus="$(nproc)"
    mem_total_mb="$(awk '/^MemTotal:/ {print int($2 / 1024); exit}' /proc/meminfo)"
    real_mem=$((mem_total_mb - 1024))
    ((real_mem >= 256)) || real_mem=256
    mkdir -p "$CONF_DIR"
    cat >"$CONF.tmp" <<EOF
# Generated by scripts/slurm-local.sh -- single-node test cluster, overwritten on start.
ClusterName=ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=600
ReturnToService=2
StateSaveLocation=${CTLD_SPOOL}
SlurmdSpoolDir=${SLURMD_SPOOL}
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${CTLD_LOG}
SlurmdLogFile=${SLURMD_LOG}
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${real_mem} Gres=gpu:${FAKE_GPUS} State=UNKNOWN
PartitionName=${PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"
    chmod 0644 "$CONF"
    # The node advertises FAKE_GPUS placeholder GPUs, each bound to a harmless character device
    # (SLURM wants one device file per GPU): jobs that request GPUs (the profile's `gpu: 1`) are
    # scheduled and accounted as on a GPU cluster, and find no CUDA device inside.
    local devices=(/dev/null /dev/zero /dev/full /dev/urandom) i
    ((FAKE_GPUS >= 1 && FAKE_GPUS <= ${#devices[@]})) || die "SLURM_LOCAL_FAKE_GPUS must be 1..${#devices[@]}"
    {
        echo "# Generated by scripts/slurm-local.sh: placeholder GPUs, no real device."
        for ((i = 0; i < FAKE_GPUS; i++)); do echo "NodeName=${NODE} Name=gpu File=${devices[i]}"; done
    } >"$CONF_DIR/gres.conf"
    chmod 0644 "$CONF_DIR/gres.conf"
    log "wrote $CONF (node $NODE, CPUs=$cpus, RealMemory=$real_mem, partition $PARTITION)"
}

start_munge() {
    if daemon_alive "$MUNGE_PID" munged && munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        log "munged already running (pid $(pid_from_file "$MUNGE_PID"))"
        return 0
    fi
    stop_daemon "$MUNGE_PID" munged
    if [[ ! -s "$MUNGE_KEY" ]]; then
        log "creating $MUNGE_KEY"
        mungekey -c -f -k "$MUNGE_KEY" || die "mungekey failed"
    fi
    chown munge:munge "$MUNGE_KEY"
    chmod 0400 "$MUNGE_KEY"
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged || die "munged failed to start" "$MUNGE_LOG"
    wait_daemon "$MUNGE_PID" munged || die "munged did not come up" "$MUNGE_LOG"
    local i
    for ((i = 0; i < 50; i++)); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || die "munge self-test failed" "$MUNGE_LOG"
    log "munged started (pid $(pid_from_file "$MUNGE_PID"))"
}

cmd_start() {
    need_root
    command -v slurmctld >/dev/null 2>&1 || die "slurm not installed; run: $0 install"
    local t0 t1
    t0="$(date +%s.%N)"
    if running; then
        log "already running:"
        sinfo_line
        return 0
    fi
    # Partially running (e.g. one daemon died): stop what is left, then start cleanly.
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld

    mkdir -p "$CONF_DIR" "$RUN_DIR" "$LOG_DIR" "$CTLD_SPOOL" "$SLURMD_SPOOL"
    # Stale state from an unclean stop makes slurmctld resurrect phantom jobs.
    find "$CTLD_SPOOL" "$SLURMD_SPOOL" -mindepth 1 -delete
    write_conf
    start_munge

    slurmctld || die "slurmctld failed to start" "$CTLD_LOG"
    wait_daemon "$CTLD_PID" slurmctld || die "slurmctld did not come up" "$CTLD_LOG"
    slurmd || die "slurmd failed to start" "$SLURMD_LOG"
    wait_daemon "$SLURMD_PID" slurmd || die "slurmd did not come up" "$SLURMD_LOG"

    local i state=""
    for ((i = 0; i < START_TIMEOUT * 2; i++)); do
        daemon_alive "$CTLD_PID" slurmctld || die "slurmctld exited" "$CTLD_LOG"
        daemon_alive "$SLURMD_PID" slurmd || die "slurmd exited" "$SLURMD_LOG"
        state="$(node_state)"
        [[ "$state" == idle ]] && break
        sleep 0.5
    done
    [[ "$state" == idle ]] ||
        die "node $NODE not idle after ${START_TIMEOUT}s (state: '${state:-none}'); run '$0 stop' to clean up" \
            "$CTLD_LOG" "$SLURMD_LOG"

    if ! timeout 60 srun -p "$PARTITION" -N1 -n1 -t 1 --mem=10 true; then
        die "srun smoke test failed; run '$0 stop' to clean up" "$CTLD_LOG" "$SLURMD_LOG"
    fi
    t1="$(date +%s.%N)"
    log "started in $(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}') s; srun smoke test ok"
    sinfo_line
}

cmd_stop() {
    need_root
    if daemon_alive "$CTLD_PID" slurmctld; then
        local jobs i
        jobs="$(timeout 10 squeue -h -o '%A' 2>/dev/null || true)"
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
            # shellcheck disable=SC2086 # word splitting of job ids is intended
            timeout 10 scancel $jobs || log "scancel reported an error (continuing)"
            for ((i = 0; i < 20; i++)); do
                [[ -z "$(timeout 10 squeue -h -t PD,R,CG,S -o '%A' 2>/dev/null || true)" ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_daemon "$SLURMD_PID" slurmd
    stop_daemon "$CTLD_PID" slurmctld
    stop_daemon "$MUNGE_PID" munged
    log "stopped"
}

cmd_status() {
    if running; then
        sinfo_line
        return 0
    fi
    local c=down d=down m=down
    daemon_alive "$CTLD_PID" slurmctld && c=up
    daemon_alive "$SLURMD_PID" slurmd && d=up
    daemon_alive "$MUNGE_PID" munged && m=up
    log "not running (slurmctld: $c, slurmd: $d, munged: $m)"
    return 1
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

main() {
    case "${1:-}" in
        install) cmd_install ;;
        start) cmd_start ;;
        stop) cmd_stop ;;
        status) cmd_status ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
