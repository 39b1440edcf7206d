#!/usr/bin/env python3
"""Per variant: durations 'Recovery has started' -> 'Recovery mode set to NORMAL' on the node that logged
'Starting do_recovery' (leader), for every recovery in the full logs (cut recoveries and rejoin recoveries)."""
import glob, re, datetime, os, sys
R = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
ts = lambda l: datetime.datetime.fromisoformat(l.split(' ')[0]).timestamp()
for v in sorted(glob.glob(os.path.join(R, '*/'))):
    durs = []
    for lf in sorted(glob.glob(v + 'ctdbd.n*.full.log')):
        st = None; leader = False
        for l in open(lf, errors='replace'):
            if 'Starting do_recovery' in l: leader = True
            elif 'Recovery has started' in l and leader: st = ts(l)
            elif 'Recovery mode set to NORMAL' in l and st is not None:
                durs.append(ts(l) - st); st = None; leader = False
    if durs:
        print(f"{os.path.basename(v[:-1])}: n={len(durs)} freeze..thaw s: " + ' '.join(f'{d:.2f}' for d in durs))
