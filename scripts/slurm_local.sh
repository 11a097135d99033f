#!/usr/bin/env bash
# A one-node SLURM on this machine, for trying the SLURM launchers and for CI: bash scripts/slurm_local.sh
#
# - does nothing when a SLURM controller already answers (`sinfo`), so it never touches a real cluster;
# - installs Debian's slurm-wlm and munge when `slurmctld` is absent (needs root and apt-get);
# - writes /etc/slurm/slurm.conf (only when absent or written by this script): one node with this machine's
#   CPUs and 80 % of its memory, partition `debug`, scheduling tuned for seconds-long test jobs;
# - starts munged, slurmctld and slurmd, and waits until the node is idle.
# Exits non-zero with one line on stderr when it cannot (not root, no apt-get, a daemon does not start).
# CELLSSL_SLURM_PARTITION overrides the partition name.
set -euo pipefail
PARTITION="${CELLSSL_SLURM_PARTITION:-debug}"
CONF=/etc/slurm/slurm.conf
MARK="# written by cellssl scripts/slurm_local.sh"
started=$SECONDS

fail() { echo "slurm_local: $*" >&2; exit 1; }
ready() { command -v sinfo >/dev/null && timeout 10 sinfo -h -o '%T' 2>/dev/null | grep -Eq 'idle|mixed|alloc'; }

if ready; then
  echo "slurm_local: a SLURM controller already answers; nothing to do"
  sinfo
  exit 0
fi
[[ $EUID -eq 0 ]] || fail "SLURM is not running and starting it needs root (run: sudo bash $0)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || fail "no apt-get: install slurm-wlm and munge with your package manager"
  echo "slurm_local: installing slurm-wlm and munge (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || fail "apt-get update failed"
  apt-get install -y -qq --no-install-recommends slurm-wlm slurmctld slurmd slurm-client munge >/dev/null \
    || fail "apt-get install slurm-wlm munge failed"
fi

# munge: the package generates /etc/munge/munge.key; the daemon needs its run directory
if ! pgrep -x munged >/dev/null; then
  [[ -f /etc/munge/munge.key ]] || { /usr/sbin/mungekey --create 2>/dev/null || /usr/sbin/create-munge-key -f; }
  mkdir -p /run/munge && chown munge:munge /run/munge
  su -s /bin/sh munge -c /usr/sbin/munged || fail "munged did not start"
fi

host=$(hostname -s)
if [[ ! -f $CONF ]] || grep -qF "$MARK" "$CONF"; then
  cpus=$(nproc)
  mem=$(($(free -m | awk '/Mem:/{print $2}') * 8 / 10))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  chown slurm:slurm /var/spool/slurmctld /var/log/slurm
  cat >"$CONF" <<CONF
$MARK
ClusterName=local
SlurmctldHost=${host}
AuthType=auth/munge
CredType=cred/munge
# containers without systemd/cgroups: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# test jobs last seconds: schedule on every submit/completion, little waiting between SIGTERM and SIGKILL
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=0,bf_interval=1,batch_sched_delay=0
KillWait=5
MinJobAge=600
InactiveLimit=0
JobRequeue=1
SlurmUser=slurm
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
NodeName=${host} CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${host} Default=YES MaxTime=INFINITE State=UP
CONF
fi

pgrep -x slurmctld >/dev/null || slurmctld || fail "slurmctld did not start (see /var/log/slurm/slurmctld.log)"
pgrep -x slurmd >/dev/null || slurmd || fail "slurmd did not start (see /var/log/slurm/slurmd.log)"
for _ in $(seq 60); do
  ready && break
  sleep 0.5
done
ready || { scontrol update nodename="$host" state=resume 2>/dev/null || true; sleep 1; }
ready || fail "the node is not idle after 30 s: $(sinfo -h -o '%T %E' 2>&1)"
echo "slurm_local: SLURM ready in $((SECONDS - started)) s"
sinfo
