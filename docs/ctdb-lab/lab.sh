#!/bin/bash
# fsha CTDB lab library: source me. Creates only fsha-ctdb-* netns, 198.18.0.0/24 addresses,
# and processes whose PIDs/PGIDs are recorded in $L/pids/.
L=${L:-/tmp/fsha-ctdb-lab}          # runtime dir (short: unix socket paths <108 chars)
OUT=${OUT:-/work/notes/ctdb-lab/results}
NODES=(198.18.0.11 198.18.0.12 198.18.0.13)
VIP=198.18.0.201
CLIENT_IP=198.18.0.101
NSP=fsha-ctdb
SW=$NSP-sw

now() { date +%s.%N; }
log() { echo "[$(date +%T.%3N)] $*" | tee -a "$OUT/lab.log" >&2; }
nsx() { local ns=$1; shift; ip netns exec "$NSP-$ns" "$@"; }
ctdbx() { local n=$1; shift; ip netns exec "$NSP-n$n" env CTDB_TEST_MODE=yes CTDB_BASE="$L/n$n" ctdb "$@"; }

net_up() {
  ip netns add $SW
  ip -n $SW link set lo up
  ip -n $SW link add br0 type bridge
  ip -n $SW link set br0 up
  local i
  for i in 1 2 3 c; do
    local ns ip
    if [ $i = c ]; then ns=$NSP-c1; ip=$CLIENT_IP; else ns=$NSP-n$i; ip=${NODES[$((i-1))]}; fi
    ip netns add $ns
    ip -n $ns link set lo up
    ip link add veth-tmp-$i type veth peer name p-$i
    ip link set veth-tmp-$i netns $ns
    ip link set p-$i netns $SW
    ip -n $ns link set veth-tmp-$i name eth0
    ip -n $ns addr add $ip/24 dev eth0
    ip -n $ns link set eth0 up
    ip -n $SW link set p-$i master br0
    ip -n $SW link set p-$i up
    [ "${NONLOCAL:-1}" = 1 ] && ip netns exec $ns sysctl -qw net.ipv4.ip_nonlocal_bind=1
  done
}

net_down() {
  local ns
  for ns in $NSP-c1 $NSP-n1 $NSP-n2 $NSP-n3 $SW; do
    ip netns del $ns 2>/dev/null
  done
}

# write per-node ctdb + smb config. $1=node(1..3) $2=profile(default|fast)
write_conf() {
  local n=$1 prof=$2 B=$L/n$n ip=${NODES[$(($1-1))]}
  mkdir -p $B/run $B/var $B/events/legacy $B/db/volatile $B/db/persistent $B/db/state \
           $B/smb/lock $B/smb/state $B/smb/cache $B/smb/pid $B/smb/private $B/smb/ncalrpc $B/smb/log
  printf '%s\n' "${NODES[@]}" > $B/nodes
  printf '#!/bin/sh\nexit 0\n' > $B/notify.sh; chmod +x $B/notify.sh
  local lt=""
  [ "$prof" = fast ] && lt="	leader timeout = ${LT:-2}"
  cat > $B/ctdb.conf <<EOC
[logging]
	location = file:$B/ctdbd.log
	log level = ${CTDB_LOGLEVEL:-NOTICE}
[cluster]
	cluster lock = !/usr/libexec/ctdb/ctdb_mutex_fcntl_helper $L/cluster/reclock
	node address = $ip
$lt
[database]
	volatile database directory = $B/db/volatile
	persistent database directory = $B/db/persistent
	state database directory = $B/db/state
[failover]
	disabled = true
[legacy]
	realtime scheduling = false
EOC
  if [ "$prof" = fast ]; then
    cat > $B/ctdb.tunables <<EOT
KeepaliveInterval=1
KeepaliveLimit=2
ElectionTimeout=1
RerecoveryTimeout=2
RecoverTimeout=10
RecoveryBanPeriod=30
EOT
  else
    rm -f $B/ctdb.tunables
  fi
  cat > $B/smb.conf <<EOS
[global]
	clustering = yes
	ctdbd socket = $B/run/ctdbd.socket
	netbios name = FSHACTDB
	workgroup = FSHALAB
	server role = standalone server
	security = user
	map to guest = Bad User
	disable netbios = yes
	smb ports = 445
	bind interfaces only = yes
	interfaces = $ip/24 $VIP/24
	lock directory = $B/smb/lock
	state directory = $B/smb/state
	cache directory = $B/smb/cache
	pid directory = $B/smb/pid
	private dir = $B/smb/private
	ncalrpc dir = $B/smb/ncalrpc
	passdb backend = tdbsam:$B/smb/private/passdb.tdb
	log file = $B/smb/log/log.%m
	log level = 1
	debug hires timestamp = yes
	server multi channel support = no
	load printers = no
	printing = bsd
	printcap name = /dev/null
	disable spoolss = yes
[share]
	path = $L/share
	guest ok = yes
	read only = yes
EOS
}

setup_dirs() {
  mkdir -p $L/pids $L/cluster $L/share $OUT
  chmod 755 $L $L/share
  [ -f $L/share/testfile ] || head -c 65536 /dev/urandom > $L/share/testfile
  chmod 644 $L/share/testfile
  cat > $L/client.conf <<EOC
[global]
	client min protocol = SMB2
EOC
}

start_ctdbd() {  # $1 node. ctdbd daemonizes (no -i: with -i it logs to stderr without timestamps);
  # its session/process-group id == daemon pid, read from the pidfile.
  local n=$1 B=$L/n$1 i
  rm -f $B/run/*.pid $B/run/*.socket
  # setsid: new session+pgrp for ctdbd and all its children (recoverd, eventd, lock helper),
  # so a "power cut" can SIGKILL the whole group at once. ctdbd itself does not setsid.
  ip netns exec $NSP-n$n setsid env CTDB_TEST_MODE=yes CTDB_BASE=$B ctdbd </dev/null >>$B/ctdbd.stderr 2>&1
  for ((i=0;i<50;i++)); do [ -s $B/run/ctdbd.pid ] && break; sleep 0.1; done
  local p=$(cat $B/run/ctdbd.pid)
  local g=$(ps -o pgid= -p $p | tr -d ' ')
  [ -n "$g" ] && [ "$g" != 1 ] && [ "$g" != "$$" ] && [ "$g" != "$(ps -o pgid= -p $$ | tr -d ' ')" ] || { echo "ERR: bad pgid $g for ctdbd $p" >&2; return 1; }
  echo $g > $L/pids/ctdbd.n$n
}
start_smbd() {  # $1 node
  local n=$1 B=$L/n$1
  ip netns exec $NSP-n$n setsid smbd --foreground --no-process-group -s $B/smb.conf </dev/null >>$B/smbd.out 2>&1 &
  echo $! > $L/pids/smbd.n$n
}
# kill a process group we started (pgid == recorded pid, since setsid made it leader)
killgrp() { local f=$L/pids/$1; [ -f $f ] || return 0; local p=$(cat $f); kill -KILL -- -$p 2>/dev/null; kill -KILL $p 2>/dev/null; rm -f $f; }
alive() { local f=$L/pids/$1; [ -f $f ] && kill -0 $(cat $f) 2>/dev/null; }

wait_running() {  # $1 node, $2 timeout s
  local n=$1 i
  for ((i=0;i<$2*5;i++)); do
    ctdbx $n runstate running >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  return 1
}
# all 3 OK and recovery mode NORMAL as seen from node $1
wait_all_ok() {
  local n=$1 t=$2 i s
  for ((i=0;i<$t*2;i++)); do
    s=$(ctdbx $n status 2>/dev/null)
    if [ "$(echo "$s" | grep -cE '^pnn:[0-9]+ .*OK')" = 3 ] && echo "$s" | grep -q 'Recovery mode:NORMAL'; then return 0; fi
    sleep 0.5
  done
  return 1
}
wait_smbd() {  # $1 node: wait until port 445 listening on node ip
  local n=$1 i
  for ((i=0;i<60;i++)); do
    nsx n$n ss -ltnH 'sport = :445' | grep -q . && return 0
    sleep 0.25
  done
  return 1
}

# one read via smbclient from client ns; $1 target ip; returns rc
read_once() {
  nsx c1 timeout ${2:-5} smbclient -s $L/client.conf -p 445 -N //$1/share -c 'get testfile /dev/null' >/dev/null 2>&1
}

cleanup_all() {
  local f
  for f in $L/pids/*; do [ -f "$f" ] && killgrp $(basename $f); done
  net_down
}
