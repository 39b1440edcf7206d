#!/bin/bash
# Usage: run.sh VARIANT PROFILE(default|fast) KICK(0|1) NTRIALS
# Brings up the 3-node ctdbd+smbd lab, runs NTRIALS power-cut trials, tears everything down.
set -u
HERE=$(cd $(dirname $0) && pwd)
VARIANT=$1 PROFILE=$2 KICK=$3 NTRIALS=${4:-4}
OUT=$HERE/results; mkdir -p $OUT
. $HERE/lab.sh
VOUT=$OUT/$VARIANT; rm -rf $VOUT; mkdir -p $VOUT
trap 'log "cleanup"; cleanup_all' EXIT; trap 'exit 130' INT TERM

SETTLE=${SETTLE:-15}   # s to wait after cluster is OK before a cut (> RerecoveryTimeout)

bring_up() {
  cleanup_all; rm -rf $L; setup_dirs
  net_up
  for n in 1 2 3; do write_conf $n $PROFILE; done
  for n in 1 2 3; do start_ctdbd $n; done
  for n in 1 2 3; do wait_running $n 60 || { log "n$n not running"; return 1; }; done
  wait_all_ok 1 60 || { log "not all OK"; ctdbx 1 status; return 1; }
  for n in 1 2 3; do start_smbd $n; done
  for n in 1 2 3; do wait_smbd $n || { log "smbd n$n not listening"; return 1; }; done
  for n in 1 2 3; do
    local ok=0 i
    for i in 1 2 3 4 5; do read_once ${NODES[$((n-1))]} && { ok=1; break; }; sleep 1; done
    [ $ok = 1 ] || { log "read via n$n failed"; return 1; }
  done
  log "cluster up ($PROFILE): $(ctdbx 1 status | tr '\n' ' ')"
}

vip_add() { nsx n$1 ip addr add $VIP/24 dev eth0; nsx n$1 arping -q -U -c 1 -i eth0 -S $VIP $VIP >/dev/null 2>&1 & }
vip_del() { nsx n$1 ip addr del $VIP/24 dev eth0 2>/dev/null; }

restore_node() {  # $1 victim
  local v=$1
  vip_del $v
  nsx n$v ip link set eth0 up
  start_ctdbd $v
  wait_running $v 90 || { log "restore: n$v not running"; return 1; }
  wait_all_ok $v 90 || { log "restore: not all OK"; return 1; }
  start_smbd $v; wait_smbd $v || return 1
}

trial() {  # $1 trial no, $2 want (leader|follower)
  local k=$1 want=$2 TD=$VOUT/t$1; mkdir -p $TD
  local leader=$(ctdbx 1 leader 2>/dev/null | tr -dc 0-9)
  [ -n "$leader" ] || leader=$(ctdbx 2 leader | tr -dc 0-9)
  local lnode=$((leader+1)) v s
  if [ $want = leader ]; then v=$lnode; else for v in 1 2 3; do [ $v != $lnode ] && break; done; fi
  for s in 1 2 3; do [ $s != $v ] && [ $s != $lnode ] && break; done  # VIP goes to a non-leader survivor
  [ $s = $v ] && for s in 1 2 3; do [ $s != $v ] && break; done
  local surv=""; for n in 1 2 3; do [ $n != $v ] && surv="$surv $n"; done
  log "trial $k: want=$want leader=n$lnode victim=n$v vip->n$s survivors=$surv kick=$KICK"
  for n in 1 2 3; do vip_del $n; done
  vip_add $v; sleep 1
  local i ok=0; for i in $(seq 1 10); do read_once $VIP 5 && { ok=1; break; }; sleep 1; done
  [ $ok = 1 ] || { log "pre-read via VIP failed"; return 1; }
  sleep $SETTLE
  { for n in 1 2 3; do echo "== n$n"; ctdbx $n status; done; } > $TD/status.before 2>&1
  declare -A off; for n in $surv; do off[$n]=$(wc -l < $L/n$n/ctdbd.log); done
  rm -f $TD/after $TD/stop
  ip netns exec $NSP-c1 env INTERVAL=0.5 TMO=2 MAX=90 NOK=3 $HERE/probe.sh $L $TD/probe.txt $TD/after $TD/stop &
  local ppid=$!
  sleep 1.5
  # ---- power cut ----
  local t0=$(now); echo $t0 > $TD/after
  nsx n$v ip link set eth0 down
  killgrp ctdbd.n$v; killgrp smbd.n$v
  local t1=$(now)
  sleep $(echo "0.3 - ($t1 - $t0)" | bc | sed 's/^-.*/0/')
  vip_add $s
  local t2=$(now) t3=""
  if [ $KICK = 1 ]; then
    for n in $surv; do nsx n$n ss -tnK dst ${NODES[$((v-1))]} '( dport = :4379 or sport = :4379 )' > $TD/kick.n$n 2>&1 & done
    wait_kick=1
    t3=$(now)
  fi
  echo "t0_cut=$t0 t1_killed=$t1 t2_vip_moved=$t2 t3_kick=$t3 victim=n$v leader_before=n$lnode vip_to=n$s" > $TD/times
  wait $ppid
  # results
  local first=$(awk -v a=$t0 '$3==0 && $1>=a {print $2}' $TD/probe.txt | sort -n | head -1)
  local firststart=$(awk -v a=$t0 '$3==0 && $1>=a {print $1, $2}' $TD/probe.txt | sort -k2 -n | head -1 | cut -d' ' -f1)
  local ttr=NA; [ -n "$first" ] && ttr=$(echo "$first - $t0" | bc)
  local nfail=$(awk -v a=$t0 '$3!=0 && $1>=a' $TD/probe.txt | wc -l)
  for n in $surv; do tail -n +$((off[$n]+1)) $L/n$n/ctdbd.log > $TD/ctdbd.n$n.log; done
  sleep 1
  { for n in $surv; do echo "== n$n"; ctdbx $n status; echo "leader: $(ctdbx $n leader)"; done; } > $TD/status.after 2>&1
  local newleader=$(ctdbx $s leader 2>/dev/null | tr -dc 0-9)
  printf '%s\t%s\t%s\tn%s\tn%s\t%s\t%s\t%s\t%s\n' $VARIANT $k $want $v $lnode "n$((newleader+1))" $ttr $nfail "$(echo "${firststart:-0} - $t0" | bc)" >> $OUT/summary.tsv
  log "trial $k result: time-to-readable=${ttr}s (first ok attempt started at +$(echo "${firststart:-0} - $t0" | bc)s), failed attempts=$nfail"
  restore_node $v || return 1
  vip_del $s
}

bring_up || { log "bring_up failed"; exit 1; }
for k in $(seq 1 $NTRIALS); do
  if (( k % 2 )); then w=leader; else w=follower; fi
  trial $k $w || { log "trial $k failed"; break; }
done
for n in 1 2 3; do cp $L/n$n/ctdbd.log $VOUT/ctdbd.n$n.full.log 2>/dev/null; done
