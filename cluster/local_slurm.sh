#!/usr/bin/env bash
# A real two-node SLURM cluster on this one machine, for the tests and for trying the SLURM launcher:
#   bash cluster/local_slurm.sh start    # install (Debian: slurm-wlm, slurmdbd, munge, mariadb) if missing,
#                                        # configure, start, wait until the nodes are idle
#   bash cluster/local_slurm.sh status   # sinfo
#   bash cluster/local_slurm.sh stop     # stop the daemons (configuration and logs stay)
# Nodes n1 and n2 are two slurmd daemons on this host (ports 17001, 17002), partition `debug`; each node
# offers this host's cores, so jobs on both oversubscribe them (tests pin OMP_NUM_THREADS=1). Accounting goes
# through slurmdbd to a local MariaDB, so that `sacct` (which submitit polls for job states) answers. Root only.
set -euo pipefail

CONF_DIR=/etc/slurm
LOG_DIR=/var/log/slurm
SPOOL=/var/spool/slurm
HOST=$(hostname -s)
CPUS=$(nproc)
# memory a node offers: half of this machine's, so two nodes never promise more than it has
MEM_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null && return
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm slurmdbd munge mariadb-server >/dev/null
}

configure() {
  mkdir -p "$CONF_DIR" "$LOG_DIR" "$SPOOL/ctld" "$SPOOL/n1" "$SPOOL/n2" /run/munge /var/lib/munge /var/log/munge
  grep -qw "$HOST" /etc/hosts || echo "127.0.0.1 $HOST" >>/etc/hosts
  grep -qw n1 /etc/hosts || echo "127.0.0.1 n1 n2" >>/etc/hosts
  if [[ ! -s /etc/munge/munge.key ]]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
  cat >"$CONF_DIR/slurm.conf" <<CONF
ClusterName=cvae-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
StateSaveLocation=$SPOOL/ctld
SlurmdSpoolDir=$SPOOL/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd-%n.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
JobRequeue=1
KillWait=30
MinJobAge=600
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
  rm -f "$CONF_DIR/cgroup.conf"
  cat >"$CONF_DIR/slurmdbd.conf" <<CONF
AuthType=auth/munge
DbdHost=$HOST
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOG_DIR/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm
CONF
  chmod 600 "$CONF_DIR/slurmdbd.conf"
}

start_database() {
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld
  if ! mariadb -e "select 1" >/dev/null 2>&1; then
    setsid mariadbd --user=mysql --bind-address=127.0.0.1 >"$LOG_DIR/mariadb.log" 2>&1 </dev/null &
    wait_for "MariaDB" 'mariadb -e "select 1"'
  fi
  mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  pgrep -x slurmdbd >/dev/null || slurmdbd
  wait_for "slurmdbd" "sacctmgr -n list cluster"
}

wait_for() {  # wait_for NAME COMMAND: up to 60 s for COMMAND to succeed
  for _ in $(seq 60); do
    bash -c "$2" >/dev/null 2>&1 && return
    sleep 1
  done
  echo "$1 did not start in 60 s; logs in $LOG_DIR" >&2
  exit 1
}

start() {
  install_packages
  configure
  if ! (munge -n </dev/null | unmunge) >/dev/null 2>&1; then
    runuser -u munge -- munged
    wait_for "munged" "munge -n </dev/null | unmunge"
  fi
  start_database
  sacctmgr -n list cluster format=cluster | grep -qw cvae-local || sacctmgr -i add cluster cvae-local >/dev/null
  pgrep -x slurmctld >/dev/null || slurmctld
  for node in n1 n2; do
    pgrep -f "slurmd -N $node" >/dev/null || slurmd -N "$node"
  done
  for _ in $(seq 60); do
    if [[ $(sinfo -h -o '%t' 2>/dev/null | sort -u | tr -d '\n') == idle ]]; then
      sinfo
      return
    fi
    sleep 1
  done
  echo "local SLURM did not become idle in 60 s; logs in $LOG_DIR" >&2
  sinfo >&2 || true
  exit 1
}

stop() {
  scancel --quiet --user=root 2>/dev/null || true
  pkill -x slurmd || true
  pkill -x slurmctld || true
  pkill -x slurmdbd || true
  mariadb-admin shutdown 2>/dev/null || true
  pkill -x munged || true
  # gone before this returns, so that a start right after finds nothing half-stopped
  for _ in $(seq 60); do
    running=0
    for daemon in slurmd slurmctld slurmdbd mariadbd munged; do
      pgrep -x "$daemon" >/dev/null && running=1
    done
    ((running)) || return 0
    sleep 0.5
  done
  echo "some SLURM daemons did not stop in 30 s" >&2
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
