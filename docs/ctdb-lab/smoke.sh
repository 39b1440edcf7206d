#!/bin/bash
# Step 1 smoke test: bring up, show status, read via each node, keep running until $1 s then cleanup
HERE=$(cd $(dirname $0) && pwd); OUT=$HERE/results/smoke; mkdir -p $OUT
. $HERE/lab.sh
trap 'cleanup_all' EXIT
cleanup_all; rm -rf $L; setup_dirs; net_up
for n in 1 2 3; do write_conf $n ${PROFILE:-default}; done
for n in 1 2 3; do CTDB_TEST_MODE=yes CTDB_BASE=$L/n$n /usr/libexec/ctdb/ctdb-config validate; echo "validate n$n rc=$?"; done
t=$(now)
for n in 1 2 3; do start_ctdbd $n; done
for n in 1 2 3; do wait_running $n 60; echo "n$n running rc=$? after $(echo "$(now)-$t"|bc)"; done
wait_all_ok 1 60; echo "allok rc=$? after $(echo "$(now)-$t"|bc)"
ctdbx 1 status; ctdbx 1 leader
for n in 1 2 3; do start_smbd $n; done
for n in 1 2 3; do wait_smbd $n; echo "smbd n$n listening rc=$?"; nsx n$n ss -ltnp 'sport = :445'; done
for n in 1 2 3; do read_once ${NODES[$((n-1))]} 10; echo "read n$n rc=$?"; done
nsx c1 timeout 10 smbclient -s $L/client.conf -p 445 -N //198.18.0.11/share -c 'ls'
ps -o pid,pgid,cmd -g $(cat $L/pids/ctdbd.n1),$(cat $L/pids/smbd.n1)
sleep ${1:-1}
