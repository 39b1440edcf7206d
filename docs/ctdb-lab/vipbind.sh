#!/bin/bash
# Does clustered smbd (bind interfaces only, interfaces = node/24 VIP/24) start listening on a VIP
# that is added AFTER smbd started, without net.ipv4.ip_nonlocal_bind?
HERE=$(cd $(dirname $0) && pwd); OUT=$HERE/results/vipbind; mkdir -p $OUT
export NONLOCAL=0
. $HERE/lab.sh
trap 'cleanup_all' EXIT
cleanup_all; rm -rf $L; setup_dirs; net_up
for n in 1 2 3; do write_conf $n default; done
for n in 1 2 3; do start_ctdbd $n; done
for n in 1 2 3; do wait_running $n 60; done; wait_all_ok 1 60; echo "allok rc=$?"
for n in 1 2 3; do start_smbd $n; done; for n in 1 2 3; do wait_smbd $n; done
echo "before VIP:"; nsx n1 ss -ltnH 'sport = :445'
nsx n1 ip addr add $VIP/24 dev eth0; nsx n1 arping -q -U -c 1 -i eth0 -S $VIP $VIP
sleep 3
echo "3 s after VIP add:"; nsx n1 ss -ltnH 'sport = :445'
read_once $VIP 5; echo "read via VIP rc=$?"
