#!/usr/bin/env python3
"""Summarise results/<variant>/t<k>: cut time, survivors' CTDB events relative to the cut, probe outcome."""
import sys, os, re, glob, datetime
R = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results')
PAT = [('dead', re.compile(r'is dead|dead count|has died|Tearing down')),
       ('lbto', re.compile(r'Leader broadcast timeout')),
       ('elect', re.compile(r'Start election|Election period ended')),
       ('lock', re.compile(r'Took cluster lock|Unable to take cluster lock')),
       ('dorec', re.compile(r'Starting do_recovery')),
       ('recact', re.compile(r'Recovery has started')),
       ('reccomp', re.compile(r'Recovery complete')),
       ('normal', re.compile(r'Recovery mode set to NORMAL')),
       ('ban', re.compile(r'[Bb]an')),
       ('conn', re.compile(r'connected to'))]
def ts(line):
    m = re.match(r'(\S+T\S+?)([+-]\d\d:\d\d) ', line)
    if not m: return None
    return datetime.datetime.fromisoformat(m.group(1) + m.group(2)).timestamp()
rows = []
for td in sorted(glob.glob(os.path.join(R, '*', 't*'))):
    tf = os.path.join(td, 'times')
    if not os.path.exists(tf): continue
    t = dict(kv.split('=', 1) for kv in open(tf).read().split())
    t0 = float(t['t0_cut'])
    print(f"### {os.path.relpath(td, R)}  victim={t['victim']} leader_before={t['leader_before']} vip_to={t['vip_to']}"
          f"  vip_moved=+{float(t['t2_vip_moved'])-t0:.3f}s" + (f" kick=+{float(t['t3_kick'])-t0:.3f}s" if t.get('t3_kick') else ''))
    first = {}
    for lf in sorted(glob.glob(os.path.join(td, 'ctdbd.n*.log'))):
        node = re.search(r'ctdbd\.(n\d)\.log', lf).group(1)
        for line in open(lf, errors='replace'):
            x = ts(line)
            if x is None: continue
            for name, p in PAT:
                if p.search(line):
                    print(f"  {node} +{x-t0:7.3f}s {line.split(': ',1)[-1].rstrip()[:150]}")
                    key = name
                    if name == 'lock' and 'Took' not in line: break
                    first.setdefault(key, x - t0)
                    if name == 'reccomp': first['reccomp_last'] = x - t0
                    break
    pr = [l.split() for l in open(os.path.join(td, 'probe.txt'))] if os.path.exists(os.path.join(td, 'probe.txt')) else []
    ok = sorted(float(e) for s, e, rc in pr if rc == '0' and float(s) >= t0)
    ttr = ok[0] - t0 if ok else None
    print(f"  time-to-readable: {ttr:.3f}s" if ttr is not None else "  time-to-readable: NONE")
    lead = 'leader' if t['victim'] == t['leader_before'] else 'follower'
    rows.append((os.path.relpath(td, R), t['victim'], lead, float(t['t2_vip_moved'])-t0,
                 float(t['t3_kick'])-t0 if t.get('t3_kick') else None,
                 first.get('dead'), first.get('lock'), first.get('recact'), first.get('normal'), first.get('reccomp'), ttr))
print("\n| trial | victim | victim was | VIP moved | kick | first 'is dead' | 'Took cluster lock' | 'Recovery has started' | 'Recovery mode NORMAL' (thaw) | 'Recovery complete' | readable via VIP |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
f = lambda v: '-' if v is None else f"{v:.2f}"
for r in rows:
    print("| " + " | ".join([r[0], r[1], r[2]] + [f(x) for x in r[3:]]) + " |")
