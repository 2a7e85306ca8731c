#!/usr/bin/env bash
# Run a small target of the demo on a real, throwaway one-node Slurm cluster through
# workflow/profiles/slurm, run the same target locally, and check that both give the same files.
#
#   sudo scripts/slurm/run_slurm_test.sh        (root; Debian/Ubuntu with apt; `make install` done)
#
# Installs what is missing (munge, MariaDB, slurmdbd, slurmctld, slurmd, the Slurm clients), then
# starts by hand, without systemd, everything under $BITRO_SLURM_DIR (default /tmp/bitro-slurm):
# munged with its own key and socket, a private MariaDB on 127.0.0.1, slurmdbd (accounting, as
# production clusters have, so that sacct works: the plugin's default status command), slurmctld
# and slurmd for one node on 127.0.0.1 with all its CPUs and one stand-in GPU (a GRES on /dev/null),
# an account `bitro` and a partition `debug`. Ports are picked free at start. Then: the demo target
# through Slurm (every job checked in sacct), a one-rule workflow asking for `gpu=1` (checked to get
# a GPU allocated), the demo target locally, and a comparison of the two results trees.
# The only file written outside that folder is the symlink /etc/slurm/slurm.conf, needed because the
# plugin's job step drops SLURM_CONF before it calls srun.
# Safe to run again: a previous run's daemons (by their recorded pids) and folder are cleared first,
# and a trap stops everything on exit, failure or interrupt. BITRO_SLURM_KEEP=1 keeps the folder.
# Exit status: 0 passed, 77 skipped (not root, no apt to install Slurm, or the machine has a Slurm
# configuration of its own), anything else failed.
set -Eeuo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BASE=${BITRO_SLURM_DIR:-/tmp/bitro-slurm}
PY=${BITRO_PYTHON:-$REPO/.venv/bin/python}
VENV_BIN=$(dirname "$PY")
SNAKEMAKE=$VENV_BIN/snakemake
CLUSTER=bitro
ACCOUNT=bitro
PARTITION=debug
SYSTEM_CONF=/etc/slurm/slurm.conf
PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
RUN_TIMEOUT=${BITRO_SLURM_RUN_TIMEOUT:-600}
# One sample of each layout (HEST-1k, TCGA, Xenium): 4 Slurm jobs (the demo, one `prepare` per sample).
SAMPLES_PER_COHORT=${BITRO_SLURM_SAMPLES:-1}

CONF=$BASE/etc/slurm.conf
PIDS=$BASE/pids
LOGS=$BASE/log
WORK=$BASE/work
MUNGE_SOCKET=$BASE/munge/munge.socket
DB_SOCKET=$BASE/run/mariadb.sock
POLICY_CREATED=0
declare -a TIMINGS=()

log() { printf '[slurm-test %s +%03ds] %s\n' "$(date +%T)" "$SECONDS" "$*" >&2; }
die() {
    log "FAILED: $*"
    exit 1
}
skip() {
    log "SKIPPED: $*"
    exit 77
}
phase_start() { PHASE_T0=$SECONDS; }
phase_end() { TIMINGS+=("$(printf '%-34s %4ds' "$1" $((SECONDS - PHASE_T0)))"); }

# ----- stopping: only what this script started, found by the pids it recorded ---------------------

stop_pid() { # name: TERM the recorded process if it still is that program, KILL it after 15 s
    local name=$1 pid
    pid=$(cat "$PIDS/$name" 2>/dev/null) || return 0
    if [[ -n $pid && -d /proc/$pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 150); do
            [[ -d /proc/$pid ]] || break
            sleep 0.1
        done
        if [[ -d /proc/$pid ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$PIDS/$name"
}

stop_cluster() {
    [[ -d $BASE ]] || return 0
    if [[ -s $PIDS/slurmctld && -f $CONF ]]; then
        SLURM_CONF=$CONF timeout 10 scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 30); do
            [[ -z $(SLURM_CONF=$CONF timeout 5 squeue -h -o %i 2>/dev/null) ]] && break
            sleep 0.5
        done
    fi
    local name
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_pid "$name"
    done
    # Job steps outlive slurmd: end what still runs in this run's folders (snakemake, slurmstepd, jobs).
    local proc pid cwd
    for proc in /proc/[0-9]*; do
        pid=${proc#/proc/}
        [[ $pid == "$$" || $pid == "$BASHPID" ]] && continue
        cwd=$(readlink "$proc/cwd" 2>/dev/null) || continue
        if [[ $cwd == "$BASE"/* ]]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    if [[ -L $SYSTEM_CONF && $(readlink "$SYSTEM_CONF") == "$BASE"/* ]]; then
        rm -f "$SYSTEM_CONF"
    fi
}

diagnose() {
    local f
    for f in "$WORK"/slurm.log "$WORK"/local.log "$LOGS"/*.log; do
        [[ -s $f ]] || continue
        printf '\n----- last lines of %s -----\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
    if [[ -d $WORK/slurm/.snakemake/slurm_logs ]]; then
        printf '\n----- Slurm job logs kept by the plugin -----\n' >&2
        find "$WORK/slurm/.snakemake/slurm_logs" -name '*.log' -print -exec tail -n 20 {} \; >&2 || true
    fi
}

on_exit() {
    local rc=$?
    trap - EXIT INT TERM
    ((rc != 0 && rc != 77)) && diagnose
    phase_start
    stop_cluster
    phase_end "stop the cluster"
    ((POLICY_CREATED)) && rm -f /usr/sbin/policy-rc.d
    if ((rc == 0)) && [[ ${BITRO_SLURM_KEEP:-0} != 1 ]]; then
        rm -rf "$BASE"
    fi
    printf '\nslurm-test timings (s):\n' >&2
    printf '  %s\n' "${TIMINGS[@]}" >&2
    printf '  %-34s %4ds\n' total "$SECONDS" >&2
    if ((rc == 0)); then
        log "OK: the Slurm run and the local run agree"
    elif ((rc == 77)); then
        log "SKIPPED: this machine cannot host the test cluster"
    else
        log "FAILED (exit $rc); logs are under $BASE"
    fi
    exit "$rc"
}

# ----- setting up -------------------------------------------------------------------------------

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        log "packages already installed: ${PACKAGES[*]}"
        return
    fi
    command -v apt-get >/dev/null || skip "missing ${missing[*]} and no apt-get to install them"
    # Packages must not start their daemons: this script starts its own.
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        POLICY_CREATED=1
    fi
    local apt=(apt-get -q -y --no-install-recommends -o DPkg::Lock::Timeout=300)
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >"$LOGS/apt.log" 2>&1; then
        log "install failed with the current package lists; apt-get update and retry"
        apt-get -q -o DPkg::Lock::Timeout=300 update >>"$LOGS/apt.log" 2>&1
        DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${missing[@]}" >>"$LOGS/apt.log" 2>&1 ||
            skip "apt-get install ${missing[*]} failed: $(tail -n 3 "$LOGS/apt.log" | tr '\n' ' ')"
    fi
    if ((POLICY_CREATED)); then
        rm -f /usr/sbin/policy-rc.d
        POLICY_CREATED=0
    fi
}

start() { # name command...: run a daemon in the foreground, in the background, and record its pid
    local name=$1
    shift
    "$@" >>"$LOGS/$name.out" 2>&1 9>&- &
    echo $! >"$PIDS/$name"
}

alive() { [[ -d /proc/$(cat "$PIDS/$1") ]] || die "$1 exited at start (see $LOGS/$1*)"; }

wait_for() { # seconds description command...: retry the command every 0.5 s until it succeeds
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what did not come up within ${seconds}s"
        sleep 0.5
    done
}

free_ports() { # n: n TCP ports on 127.0.0.1 that nothing listens on
    "$PY" - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

write_configs() {
    local host=$1 cpus mem_mb overrides=""
    cpus=$(nproc)
    mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    # Rules ask for up to 8 GB; a smaller machine still takes them (Slurm does not enforce memory here).
    if ((mem_mb < 8192)); then
        mem_mb=8192
        overrides="SlurmdParameters=config_overrides"
    fi
    read -r DB_PORT DBD_PORT CTLD_PORT SLURMD_PORT < <(free_ports 4)
    DB_PASS=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
    cat >"$CONF" <<EOF
# One-node test cluster written by scripts/slurm/run_slurm_test.sh; everything lives under $BASE.
ClusterName=$CLUSTER
MailProg=/bin/true
# host(address): no DNS lookups, everything on the loopback.
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
StateSaveLocation=$BASE/state
SlurmdSpoolDir=$BASE/spool
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups (no systemd here, and the VM's hierarchy is not ours): plain process tracking.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Clients reach slurmdbd through the munge socket named here, not AuthInfo's (default: /run/munge).
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to squeue for 5 minutes, should a run use --slurm-status-command squeue.
MinJobAge=300
SlurmdTimeout=300
InactiveLimit=0
KillWait=10
$overrides
GresTypes=gpu
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb Gres=gpu:1 State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    # A GPU that Slurm can allocate (CUDA_VISIBLE_DEVICES=0 in the job) though there is none.
    echo "NodeName=$host Name=gpu File=/dev/null Count=1" >"$BASE/etc/gres.conf"
    # slurmdbd refuses a slurmdbd.conf that others can read (it holds the database password).
    install -m 600 /dev/null "$BASE/etc/slurmdbd.conf"
    cat >"$BASE/etc/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
}

start_munge() {
    head -c 1024 /dev/urandom >"$BASE/munge/munge.key"
    chmod 400 "$BASE/munge/munge.key"
    start munged munged --foreground --force --key-file="$BASE/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$BASE/run/munged.pid" --log-file="$LOGS/munged.log" --seed-file="$BASE/munge/seed"
    wait_for 20 munged bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"
}

start_mariadb() {
    mariadb-install-db --no-defaults --datadir="$BASE/db" --user=root --skip-test-db \
        --auth-root-authentication-method=socket >"$LOGS/mariadb-install.log" 2>&1 ||
        die "mariadb-install-db failed (see $LOGS/mariadb-install.log)"
    start mariadbd mariadbd --no-defaults --datadir="$BASE/db" --user=root --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --skip-log-bin \
        --pid-file="$BASE/run/mariadbd.pid" --log-error="$LOGS/mariadb.log" \
        --innodb-buffer-pool-size=128M --innodb-log-file-size=32M --innodb-flush-log-at-trx-commit=0 \
        --innodb-lock-wait-timeout=900
    wait_for 60 MariaDB mariadb-admin --no-defaults --socket="$DB_SOCKET" -uroot ping
    mariadb --no-defaults --socket="$DB_SOCKET" -uroot <<EOF
CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF
}

start_slurm() {
    local host=$1 state
    start slurmdbd slurmdbd -D
    wait_for 90 slurmdbd sacctmgr -n list cluster
    sacctmgr -i add cluster "$CLUSTER" >/dev/null
    sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" Description=test Organization=bitro >/dev/null
    sacctmgr -i add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
    start slurmctld slurmctld -D -i
    wait_for 60 slurmctld bash -c "scontrol ping | grep -q UP"
    alive slurmctld
    start slurmd slurmd -D
    local deadline=$((SECONDS + 60))
    while :; do
        state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
        [[ $state == idle ]] && break
        alive slurmd
        [[ $state == inval* ]] && die "slurmctld rejected node $host (see $LOGS/slurmctld.log)"
        [[ $state == drain* || $state == down* ]] && scontrol update NodeName="$host" State=RESUME 2>/dev/null
        ((SECONDS < deadline)) || die "node $host is '${state:-unknown}', not idle, after 60s"
        sleep 0.5
    done
    log "node $host idle: $(sinfo -h -N -o '%N %c CPUs %m MB %P')"
    sacctmgr -n -P show assoc user=root format=account | grep -qx "$ACCOUNT" ||
        die "root has no association with account $ACCOUNT"
}

write_profile() { # the repository's Slurm profile, with an account and a partition as a user sets them
    local source=$REPO/workflow/profiles/slurm/config.yaml
    "$PY" - "$source" "$WORK/profile/config.yaml" "$ACCOUNT" "$PARTITION" <<'EOF'
import sys
from pathlib import Path

import yaml

source, target, account, partition = sys.argv[1:]
profile = yaml.safe_load(Path(source).read_text())
profile["default-resources"] |= {"slurm_account": account, "slurm_partition": partition}
# The plugin waits 40 s before its first status check and 10 s more after each check that finds no
# job finished; jobs here take seconds.
profile["slurm-init-seconds-before-status-checks"] = 2
profile["latency-wait"] = 10
profile["keep-going"] = False
Path(target).parent.mkdir(parents=True, exist_ok=True)
Path(target).write_text(yaml.safe_dump(profile, sort_keys=False))
EOF
}

run_workflow() { # name extra-args...: run the small demo target in $WORK/name
    local name=$1
    shift
    mkdir -p "$WORK/$name"
    mapfile -t TARGETS < <("$PY" "$REPO/scripts/slurm/small_project.py" "$WORK/$name" \
        --samples-per-cohort "$SAMPLES_PER_COHORT")
    # In the background, so that a TERM sent to this script is handled at once, not after the run.
    (
        cd "$WORK/$name"
        PATH="$VENV_BIN:$PATH" exec timeout "$RUN_TIMEOUT" "$SNAKEMAKE" \
            --snakefile "$REPO/workflow/Snakefile" "$@" "${TARGETS[@]}" --configfile config/config.yaml
    ) >"$WORK/$name.log" 2>&1 9>&- &
    wait $! || die "the $name run failed (exit $?; see $WORK/$name.log)"
}

check_slurm_run() { # every job went through sbatch, under the account and partition, and completed
    local log=$WORK/slurm.log run_id steps submitted lines completed
    steps=$(sed -n 's/^\([0-9]*\) of \1 steps (100%) done$/\1/p' "$log" | tail -1)
    [[ -n $steps && $steps -gt 0 ]] || die "no 'N of N steps (100%) done' in $log"
    run_id=$(sed -n 's/.*SLURM run ID: \([0-9a-f-]*\).*/\1/p' "$log" | head -1)
    [[ -n $run_id ]] || die "no 'SLURM run ID' in $log: did the run use the slurm executor?"
    submitted=$(grep -c 'has been submitted with SLURM jobid' "$log" || true)
    ((submitted == steps)) || die "$submitted sbatch submissions for $steps jobs"
    # slurmctld hands job ends to slurmdbd asynchronously: give sacct up to a minute.
    for _ in $(seq 120); do
        lines=$(sacct -X -n -P --name="$run_id" --starttime="$START_TIME" -o JobID,State,Account,Partition)
        completed=$(grep -c "|COMPLETED|$ACCOUNT|$PARTITION\$" <<<"$lines" || true)
        ((completed == steps)) && break
        sleep 0.5
    done
    ((completed == steps)) || die "sacct shows $completed of $steps jobs COMPLETED under $ACCOUNT/$PARTITION:
$lines"
    log "$steps jobs went through sbatch and completed (sacct: account $ACCOUNT, partition $PARTITION)"
}

check_gpu_rule() { # a rule asking for gpu=1 gets a GPU through the profile: --gpus=1, then a GRES
    mkdir -p "$WORK/gpu"
    cat >"$WORK/gpu/Snakefile" <<'EOF'
rule gpu_probe:
    output:
        "gpu_probe.txt",
    threads: 1
    resources:
        gpu=1,
        mem_mb=500,
        runtime=5,
    shell:
        "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES > {output}"
EOF
    (
        cd "$WORK/gpu"
        PATH="$VENV_BIN:$PATH" exec timeout "$RUN_TIMEOUT" "$SNAKEMAKE" --workflow-profile "$WORK/profile"
    ) >"$WORK/gpu.log" 2>&1 9>&- &
    wait $! || die "the GPU rule failed (exit $?; see $WORK/gpu.log)"
    grep -qx 'CUDA_VISIBLE_DEVICES=0' "$WORK/gpu/gpu_probe.txt" ||
        die "the GPU rule saw $(cat "$WORK/gpu/gpu_probe.txt"), not CUDA_VISIBLE_DEVICES=0"
    local run_id tres
    run_id=$(sed -n 's/.*SLURM run ID: \([0-9a-f-]*\).*/\1/p' "$WORK/gpu.log" | head -1)
    for _ in $(seq 120); do
        tres=$(sacct -X -n -P --name="$run_id" --starttime="$START_TIME" -o AllocTRES)
        [[ $tres == *gres/gpu=1* ]] && break
        sleep 0.5
    done
    [[ $tres == *gres/gpu=1* ]] || die "sacct shows no GPU allocated to the gpu=1 rule: '$tres'"
    log "a gpu=1 rule got a GPU from Slurm (sacct AllocTRES: $tres)"
}

main() {
    [[ $EUID -eq 0 ]] || skip "run as root: it installs packages and starts the Slurm daemons"
    [[ -x $SNAKEMAKE ]] || die "no $SNAKEMAKE: run 'make install' first"
    mkdir -p "$(dirname "$BASE")"
    exec 9>"$BASE.lock"
    flock -w 900 9 || die "another run holds $BASE.lock"
    trap on_exit EXIT
    trap 'exit 130' INT TERM

    phase_start
    stop_cluster # what a previous run left behind
    rm -rf "$BASE"
    mkdir -p "$BASE"/{etc,run,state,spool,munge,db} "$PIDS" "$LOGS" "$WORK"
    chmod 755 "$BASE" "$BASE/munge"
    phase_end "clear a previous run"
    if [[ -e $SYSTEM_CONF || -L $SYSTEM_CONF ]]; then
        skip "$SYSTEM_CONF exists and is not this script's: not touching a real cluster's configuration"
    fi

    phase_start
    install_packages
    phase_end "install packages"

    phase_start
    local host
    host=$(hostname -s)
    export SLURM_CONF=$CONF
    write_configs "$host"
    mkdir -p "$(dirname "$SYSTEM_CONF")"
    ln -s "$CONF" "$SYSTEM_CONF"
    start_munge
    start_mariadb
    start_slurm "$host"
    phase_end "start munge, MariaDB, Slurm"

    phase_start
    START_TIME=$(date +%Y-%m-%dT%H:%M:%S)
    write_profile
    log "running the small demo target through Slurm ($WORK/slurm)"
    run_workflow slurm --workflow-profile "$WORK/profile"
    check_slurm_run
    phase_end "Slurm run ($(grep -c 'has been submitted' "$WORK/slurm.log") jobs)"

    phase_start
    check_gpu_rule
    phase_end "Slurm run of a gpu=1 rule"

    phase_start
    log "running the same target locally ($WORK/local)"
    run_workflow local --cores "$(nproc)"
    phase_end "local run"

    phase_start
    # The preflight reports (doctor/) describe the machine each run checked from (its GPU, its timings),
    # not what the workflow computed, so they differ between a compute node and this one.
    "$PY" "$REPO/scripts/slurm/compare_outputs.py" "$WORK/slurm/results" "$WORK/local/results" \
        --ignore logs --ignore benchmarks --ignore doctor --ignore-key seconds >&2 ||
        die "the Slurm and the local outputs differ"
    phase_end "compare outputs"
}

# Sourcing the file (for debugging) defines the functions without running anything.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
