#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for testing `job_launcher.py --mode slurm` for real.
#
#   sudo bash scripts/slurm_local_cluster.sh start    # install if needed, start, wait until idle
#   sudo bash scripts/slurm_local_cluster.sh status   # daemons + sinfo; exit 0 only if usable
#   sudo bash scripts/slurm_local_cluster.sh stop     # cancel jobs, stop slurmd/slurmctld/munged
#
# This host is both the controller and the only compute node (CPUs = nproc, partition `debug`).
# Meant for throw-away machines (CI, containers): it writes /etc/slurm/slurm.conf, and refuses to
# overwrite one it did not write. Environment: SLURM_LOCAL_DIR (state, logs, pid files; default
# /var/spool/slurm-local), SLURM_LOCAL_CRED_EXPIRE (seconds, default 10), SLURM_LOCAL_TIMEOUT
# (seconds to wait for the node, default 60).
#
# What we learnt getting this to run in a gVisor sandbox (Debian 12, slurm-wlm 22.05, no systemd):
# - The Debian packages install fine with `apt-get install --no-install-recommends slurm-wlm
#   munge`; their postinst cannot start services (no systemd, policy-rc.d), so we start
#   the binaries directly. munge's postinst already creates /etc/munge/munge.key; we create one
#   only if it is missing. munged must run as the `munge` user and needs /run/munge (not created
#   without systemd-tmpfiles).
# - No cgroup.conf is needed: with ProctrackType=proctrack/linuxproc (process tree from /proc)
#   and TaskPlugin=task/none slurmd 22.05 never touches cgroups (the sandbox's cgroup mounts are
#   not usable for delegation anyway). JobAcctGatherType=none and AccountingStorageType=none
#   mean there is no slurmdbd, so `sacct` does not work: use `squeue` / `scontrol show job` (a
#   finished job stays visible for MinJobAge seconds).
# - Daemons run as root (SlurmUser=root) so no directory ownership dance is needed.
# - CPUs=nproc alone (no sockets/cores) with select/cons_tres + CR_Core gives nproc
#   allocatable cores, so `sbatch -n 2` / `srun -n 2` run 2 tasks side by side.
# - `scontrol requeue` holds the job back for AuthInfo cred_expire seconds (default 120!) before
#   it may start again; we set cred_expire=10 and sched_interval/bf_interval=5 so a requeued job
#   restarts within ~15 s.
# - Harmless log noise: "mpi/pmix_v4: can not load PMIx library" (libpmix not installed; we use
#   MpiDefault=none) and "Could not open ... state file" on the very first start.
# - RealMemory is set a little below MemTotal: a node that reports less memory than configured
#   is drained ("Low RealMemory").
# - Daemons get stdin/stdout/stderr redirected so a caller capturing output (pytest) never
#   waits on pipes inherited by a daemon. Killed daemons may linger as zombies (the sandbox's
#   pid 1 does not reap them), so "running" means: pid alive and not in state Z.
# - `--signal=USR1@S` goes to every process of every job step (all srun tasks and their
#   children, e.g. DataLoader workers), not to the batch shell (that would need `B:`); Slurm
#   checks time limits about once a minute, so it arrives up to ~60 s early. `scancel
#   --signal=USR1 JOBID` sends the same signal at once (used by tests/test_slurm_cluster.py).
#   With --time not much longer than S, every restart is signalled again soon after it starts.
# - A right-after-restart `sinfo` may still show the old node state, so readiness also waits
#   for the node's SlurmdStartTime to be newer than the restart.
# - Timing here: `start` takes ~1 s (~5 s when it first has to apt-get install from a warm apt
#   cache); an already running cluster is detected in ~0.1 s.
# Exit codes: 0 ok, 2 usage / not root / foreign slurm.conf, 3 not ready (status: not running),
# 4 Slurm could not be installed.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

ROOT_DIR=${SLURM_LOCAL_DIR:-/var/spool/slurm-local}
CONF=/etc/slurm/slurm.conf
MARKER="# written by suave-daino scripts/slurm_local_cluster.sh"
CRED_EXPIRE=${SLURM_LOCAL_CRED_EXPIRE:-10}
WAIT_S=${SLURM_LOCAL_TIMEOUT:-60}
NODE=$(hostname -s)
CTLD_PID=$ROOT_DIR/run/slurmctld.pid
SLURMD_PID=$ROOT_DIR/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid

die() { # die MESSAGE [EXIT_CODE]
  echo "error: $1" >&2
  exit "${2:-1}"
}
log() { echo "[slurm-local] $*"; }

alive() { # alive PIDFILE -> true if the process in PIDFILE is running (not a zombie)
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1 # the daemon may remove it while we look
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && ! grep -q '^State:.*Z' "/proc/$pid/status" 2>/dev/null
}

install_packages() {
  local need=0 bin
  for bin in slurmctld slurmd sinfo sbatch srun scontrol munged munge; do
    command -v "$bin" >/dev/null 2>&1 || need=1
  done
  [ "$need" = 1 ] || return 0
  command -v apt-get >/dev/null || die "Slurm is not installed and apt-get is unavailable" 4
  log "installing slurm-wlm and munge with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  local apt=(apt-get install -y -q --no-install-recommends slurm-wlm munge)
  if ! "${apt[@]}" >"$ROOT_DIR/log/apt.log" 2>&1; then
    apt-get update -q >>"$ROOT_DIR/log/apt.log" 2>&1 || true
    "${apt[@]}" >>"$ROOT_DIR/log/apt.log" 2>&1 \
      || die "apt-get could not install slurm-wlm and munge (see $ROOT_DIR/log/apt.log)" 4
  fi
}

start_munge() {
  if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
    return 0
  fi
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  log "starting munged"
  runuser -u munge -- /usr/sbin/munged </dev/null >/dev/null 2>&1 || die "munged failed to start"
  for _ in $(seq 50); do
    munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  die "munged started but credentials do not round-trip (munge -n | unmunge)"
}

write_conf() { # write_conf FILE: the slurm.conf for this host
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/^MemTotal:/ {printf "%d", $2 / 1024 * 0.98}' /proc/meminfo)
  cat >"$1" <<EOF
$MARKER
ClusterName=local
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=$CRED_EXPIRE
StateSaveLocation=$ROOT_DIR/ctld
SlurmdSpoolDir=$ROOT_DIR/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$ROOT_DIR/log/slurmctld.log
SlurmdLogFile=$ROOT_DIR/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
InactiveLimit=0
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n1; }

slurmd_registered_since() { # true once the slurmd started at epoch $1 has registered
  local when
  when=$(scontrol show node "$NODE" 2>/dev/null | grep -o 'SlurmdStartTime=[^ ]*' | cut -d= -f2)
  [ -n "$when" ] && [ "$(date -d "$when" +%s 2>/dev/null || echo 0)" -ge "$1" ]
}

wait_ready() { # wait_ready [EPOCH]: node usable (and, given EPOCH, its slurmd started since)
  local state="" since=${1:-0}
  for _ in $(seq $((WAIT_S * 2))); do
    state=$(node_state)
    case "$state" in
      idle | mixed | allocated | completing) slurmd_registered_since "$since" && return 0 ;;
      *drain* | down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 0.5
  done
  die "node $NODE not ready after ${WAIT_S}s (state '${state:-none}'); see $ROOT_DIR/log/" 3
}

stop_daemons() {
  local f pid
  for f in "$SLURMD_PID" "$CTLD_PID"; do
    alive "$f" || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do alive "$f" || break; sleep 0.1; done
    if alive "$f"; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$f"
  done
}

cmd_start() {
  [ "$(id -u)" = 0 ] || die "run as root (it installs packages and writes $CONF)" 2
  local t0=$SECONDS
  mkdir -p "$ROOT_DIR"/{ctld,slurmd,log,run} /etc/slurm
  install_packages
  start_munge
  if [ -e "$CONF" ] && ! grep -qxF "$MARKER" "$CONF"; then
    die "$CONF exists and was not written by this script; refusing to overwrite it" 2
  fi
  local new=$ROOT_DIR/run/slurm.conf.new
  write_conf "$new"
  if [ -e "$CONF" ] && cmp -s "$new" "$CONF" && alive "$CTLD_PID" && alive "$SLURMD_PID"; then
    rm -f "$new"
    wait_ready
    log "already running (node $NODE: $(node_state))"
    return 0
  fi
  stop_daemons # config changed or a daemon is missing: (re)start both
  mv "$new" "$CONF"
  log "starting slurmctld and slurmd (logs in $ROOT_DIR/log)"
  local since
  since=$(date +%s)
  slurmctld </dev/null >>"$ROOT_DIR/log/slurmctld.stdout" 2>&1 || die "slurmctld failed to start"
  slurmd </dev/null >>"$ROOT_DIR/log/slurmd.stdout" 2>&1 || die "slurmd failed to start"
  wait_ready "$since"
  log "ready in $((SECONDS - t0))s: node $NODE $(node_state), partition debug, $(nproc) CPUs"
}

cmd_stop() {
  if alive "$CTLD_PID"; then
    local jobs
    jobs=$(squeue -h -o %A 2>/dev/null || true)
    if [ -n "$jobs" ]; then
      log "cancelling jobs: $(echo "$jobs" | tr '\n' ' ')"
      # shellcheck disable=SC2086
      scancel $jobs 2>/dev/null || true
      for _ in $(seq 30); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
    fi
  fi
  stop_daemons
  if alive "$MUNGE_PID"; then
    kill "$(cat "$MUNGE_PID")" 2>/dev/null || true
  fi
  log "stopped"
}

cmd_status() {
  local ok=0 f name
  for name in slurmctld slurmd; do
    f=$ROOT_DIR/run/$name.pid
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; ok=3; fi
  done
  if alive "$MUNGE_PID"; then echo "munged: running (pid $(cat "$MUNGE_PID"))"; else
    echo "munged: stopped"
    ok=3
  fi
  [ "$ok" = 0 ] && sinfo && squeue
  return "$ok"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) die "usage: $0 start|stop|status" 2 ;;
esac
