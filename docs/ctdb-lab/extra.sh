#!/bin/bash
# Extra experiments: (1) does smbd listen on a not-yet-present VIP without ip_nonlocal_bind?
# (2) kick+fast with all CTDB/smbd state on tmpfs (is the ~2 s recovery fsync-bound?)
HERE=$(cd $(dirname $0) && pwd)
NONLOCAL=0 $HERE/smoke.sh 1 > $HERE/results/smoke-nonlocal0.out 2>&1
L=/dev/shm/fsha-ctdb-lab $HERE/run.sh e-kick-fast-tmpfs fast 1 4 > $HERE/results/run-e.out 2>&1
rm -rf /dev/shm/fsha-ctdb-lab
