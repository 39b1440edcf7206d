#!/bin/bash
# Runs INSIDE the client netns. Launch a fresh smbclient read every $INTERVAL s, each bounded by
# `timeout $TMO`; log "start end rc" (epoch seconds). Stops at $STOPFILE, after $NOK successes
# started after $AFTER, or after $MAX s.
L=$1 OUTF=$2 AFTER=$3 STOPFILE=$4
INTERVAL=${INTERVAL:-0.5} TMO=${TMO:-2} MAX=${MAX:-120} NOK=${NOK:-3}
: > $OUTF
t_start=$(date +%s.%N)
one() {
  local s=$(date +%s.%N)
  timeout $TMO smbclient -s $L/client.conf -p 445 -N //198.18.0.201/share -c 'get testfile /dev/null' >/dev/null 2>&1
  local rc=$?
  echo "$s $(date +%s.%N) $rc" >> $OUTF
}
i=0
while (( i < MAX*2*4 )); do   # hard bound on iterations
  i=$((i+1))
  [ -f $STOPFILE ] && break
  one &
  sleep $INTERVAL
  ok=$(awk -v a=$(cat $AFTER 2>/dev/null || echo 9e18) '$3==0 && $1>=a' $OUTF | wc -l)
  (( ok >= NOK )) && break
  awk -v a=$t_start -v b=$(date +%s.%N) -v m=$MAX 'BEGIN{exit !(b-a>=m)}' && break
done
wait
