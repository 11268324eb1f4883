#!/usr/bin/env python3
"""Where a benchmark's time goes, from its Synapse access log (beside
synapse-cpu.py, which sums CPU): the intake bot's requests per endpoint in
the intake half, the gaps between its /sync requests (and the echo bot's),
the order of its requests in each room, the admission's steps (p50 seconds
after the room summary request), the invite -> the bot's first look, each
half's "open chat -> first message" split into its steps (the visitor's
createRoom, the bot's first look, its first send, the visitor's next
request in the room) with what the bots had in flight during those
createRooms, each half's turns split the same way (the visitor's answer
stored -> the bot's sync answered -> the bot's reply sent -> stored -> the
visitor's sync answered: the bot's own share is the second step), and how
long requests waited for Synapse's database connection.

    python3 scripts/synapse-steps.py /tmp/intake-synapse-*/synapse.log
"""
import re, sys, datetime, bisect
from collections import defaultdict, Counter
from pathlib import Path
import importlib.util
spec = importlib.util.spec_from_file_location('sc', Path(__file__).with_name('synapse-cpu.py'))
sc = importlib.util.module_from_spec(spec); spec.loader.exec_module(sc)
LINE = re.compile(r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) .*? \{(?P<who>[^}]*)\} Processed request: (?P<real>[\d.]+)sec/.*?\"(?P<method>[A-Z]+) (?P<path>\S+) HTTP")
rows=[]
db_wait=db_exec=0.0
for line in open(sys.argv[1], errors='replace'):
    m=LINE.search(line)
    if not m: continue
    d=re.search(r'db=\(([\d.]+)sec/([\d.]+)sec/', line)
    if d and '{@echo' not in line:
        db_wait+=float(d.group(1)); db_exec+=float(d.group(2))
    ts=datetime.datetime.strptime(m['ts'],'%Y-%m-%d %H:%M:%S,%f').timestamp()
    rows.append((ts-float(m['real']), ts, sc.who(m['who']), m['method'], m['path'], m['who']))
echo_start=min((r[0] for r in rows if r[2]=='echo bot'), default=float('inf'))
bot=[r for r in rows if r[2]=='intake bot' and r[0]<echo_start]
c=Counter(re.sub(r'/redact/(\{event\}|[^/]+)/[^/]+$', '/redact/{event}/{txn}', sc.endpoint(r[3],r[4])) for r in bot)
print('bot requests (intake half):', len(bot))
for k,v in c.most_common(25): print(f'  {v:6d} {k}')
def ep(r):
    return re.sub(r'/redact/\{event\}/[^/]+$', '/redact/{event}/{txn}', sc.endpoint(r[3], r[4]))


def gapstats(name, rs):
    syncs=sorted((r for r in rs if '/sync' in r[4]), key=lambda r:r[0])
    gaps=sorted(b[0]-a[1] for a,b in zip(syncs,syncs[1:]))
    if not gaps: return
    q=lambda p: gaps[min(len(gaps)-1,int(p*len(gaps)))]
    durs=sorted(r[1]-r[0] for r in syncs)
    print(f'{name} /sync: {len(syncs)}; response -> next request p50 {q(.5):.2f} s p90 {q(.9):.2f} s max {gaps[-1]:.2f} s, sum {sum(gaps):.0f} s; /sync duration p50 {durs[len(durs)//2]:.2f} s')
gapstats('intake bot', bot)
gapstats('echo bot', [r for r in rows if r[2]=='echo bot'])
# per room sequence of the bot's requests
rooms=defaultdict(list)
for r in bot:
    m=re.search(r'/rooms/([^/]+)/', r[4]) or re.search(r'/join/([^/?]+)', r[4])
    if m: rooms[m.group(1)].append(r)
seqs=Counter()
for k,rs in rooms.items():
    rs.sort(key=lambda r:r[0])
    seqs[tuple(ep(r).replace('/rooms/{room}','') for r in rs[:8])]+=1
print('first 8 requests of the bot per room, most common:')
for s,n in seqs.most_common(3): print(' ',n, ' | '.join(s))
# the admission's steps per room, from the room summary request on
steps=defaultdict(list)
for k,rs in rooms.items():
    summ=[r for r in bot if '/room_summary/' in r[4] and k in r[4]]
    if not summ: continue
    t0=summ[0][0]
    seen=set()
    steps['summary end'].append(summ[0][1]-t0)
    for r in rs:
        e=ep(r).replace('/rooms/{room}','')
        if e in seen: continue
        seen.add(e)
        steps[e+' start'].append(r[0]-t0); steps[e+' end'].append(r[1]-t0)
med=lambda v: sorted(v)[len(v)//2]
print('admission steps, p50 seconds after the room summary request (rooms):')
for k,v in sorted(steps.items(), key=lambda kv: med(kv[1]))[:16]:
    print(f'  {med(v):7.2f}  {k} ({len(v)})')
# invite -> the bot's first look, paired in order (meaningful while rooms arrive apart)
creates=sorted(r[1] for r in rows if r[2]=='visitors' and r[3]=='POST' and '/createRoom' in r[4] and r[0]<echo_start)
looks=sorted(r[0] for r in bot if '/room_summary/' in r[4])
if creates and len(creates)==len(looks):
    d=sorted(b-a for a,b in zip(creates,looks))
    print(f'createRoom answered -> bot asks for the room summary: p50 {d[len(d)//2]:.2f} s, min {d[0]:.2f}, max {d[-1]:.2f} ({len(d)} paired in order)')
    ec=sorted(r[1] for r in rows if r[2]=='visitors' and r[3]=='POST' and '/createRoom' in r[4] and r[0]>=echo_start)
    ej=sorted(r[0] for r in rows if r[2]=='echo bot' and '/join' in r[4])
    if ec and len(ec)==len(ej):
        d=sorted(b-a for a,b in zip(ec,ej))
        print(f'echo half: createRoom answered -> echo bot joins: p50 {d[len(d)//2]:.2f} s')
# Open chat -> first message, per visitor and half: the visitor's createRoom
# (its room is the first one the visitor names afterwards), then the bot's
# first request in that room, its first send, and the visitor's next request
# there (it answers as soon as the message is in). Seconds after the
# createRoom was received, p50 / p90.
def pct(v, p):
    return sorted(v)[min(len(v) - 1, int(p * len(v)))]
def room_of(path):
    m = re.search(r'/rooms/(![^/]+)/', path) or re.search(r'/join/(![^/?]+)', path) or re.search(r'/room_summary/(![^/?]+)', path)
    return m and m.group(1)
for half, lo, hi in (('intake half', 0, echo_start), ('echo half', echo_start, float('inf'))):
    hr = [r for r in rows if lo <= r[0] < hi]
    creates = [r for r in hr if r[2] == 'visitors' and '/createRoom' in r[4]]
    by_room, by_who = defaultdict(list), defaultdict(list)
    for r in hr:
        k = room_of(r[4])
        if k:
            by_room[k].append(r)
            by_who[r[5]].append(r)
    bot_calls = [r for r in hr if r[2] in ('intake bot', 'echo bot') and '/sync' not in r[4]]
    marks = defaultdict(list)
    for c in creates:
        mine = [r for r in by_who[c[5]] if r[0] >= c[1]]
        if not mine: continue
        k = room_of(mine[0][4])
        bots = sorted((r for r in by_room[k] if r[2] in ('intake bot', 'echo bot')), key=lambda r: r[0])
        sends = [r for r in bots if '/send/' in r[4]]
        if not sends: continue
        for name, t in (('createRoom answered', c[1]), ('bot\'s first request starts', bots[0][0]),
                        ('bot\'s first send starts', sends[0][0]), ('bot\'s first send answered', sends[0][1]),
                        ('visitor\'s next request in the room', mine[0][0])):
            marks[name].append(t - c[0])
    if not marks: continue
    print(f'{half}: open chat -> first message, seconds after the createRoom was received, p50 / p90 ({len(creates)} rooms):')
    for name, v in marks.items():
        print(f'  {pct(v, .5):6.2f} / {pct(v, .9):6.2f}  {name}')
    during = Counter()
    for c in creates:
        for r in bot_calls:
            if r[0] < c[1] and r[1] > c[0]:
                during[f'{r[2]} {ep(r)}'] += 1
    if during:
        print(f'  the bots\' requests (not /sync) in flight during those createRooms: ' + ', '.join(f'{v} {k}' for k, v in during.most_common(6)))
# A turn in steps, per half: the visitor's answer stored (its PUT answered,
# t1), the bot's /sync that brought it answered (t2: the homeserver handing
# the answer over; see below), the bot's next send into that room starts
# (t3: the bot's own work, its key requests included) and is answered (t4:
# stored), the visitor's first /sync answered after t4 (t5). p50 / p90 over
# the turns.
for half, lo, hi, bot_name in (('intake half', 0, echo_start, 'intake bot'), ('echo half', echo_start, float('inf'), 'echo bot')):
    hr = [r for r in rows if lo <= r[0] < hi]
    bot_syncs = sorted((r[1], r[0]) for r in hr if r[2] == bot_name and '/sync' in r[4])
    sync_ends = [e for e, _ in bot_syncs]
    vis_syncs = defaultdict(list)
    for r in hr:
        if r[2] == 'visitors' and '/sync' in r[4]: vis_syncs[r[5]].append(r[1])
    for v in vis_syncs.values(): v.sort()
    sends = defaultdict(list)
    for r in hr:
        if '/send/' in r[4] and r[2] in ('visitors', bot_name):
            sends[room_of(r[4])].append(r)
    parts = defaultdict(list)
    for k, rs in sends.items():
        rs.sort(key=lambda r: r[0])
        for i, v in enumerate(rs):
            if v[2] != 'visitors': continue
            reply = next((r for r in rs[i + 1:] if r[2] == bot_name and r[0] >= v[1]), None)
            if not reply: continue
            # The sync that brought the answer: the first one asked for after
            # it was stored, unless the reply started before that one was
            # answered (then an earlier one, answered after t1, brought it).
            j = bisect.bisect_right(sync_ends, v[1])
            if j == len(bot_syncs) or sync_ends[j] > reply[0]: continue
            later = next((e for e, st in bot_syncs[j:] if st >= v[1]), None)
            t2 = later if later is not None and later <= reply[0] else sync_ends[j]
            vs = vis_syncs[v[5]]
            m = bisect.bisect_right(vs, reply[1])
            if m == len(vs): continue
            t1, t3, t4, t5 = v[1], reply[0], reply[1], vs[m]
            for name, d in (('answer stored -> the bot\'s sync answered', t2 - t1), ('-> the bot\'s reply starts (the bot\'s own share)', t3 - t2),
                            ('-> the reply stored', t4 - t3), ('-> the visitor\'s sync answered', t5 - t4), ('answer stored -> visitor\'s sync with the reply', t5 - t1)):
                parts[name].append(d)
    if not parts: continue
    n = len(next(iter(parts.values())))
    print(f'{half}: a turn in steps, seconds, p50 / p90 ({n} turns):')
    for name, v in parts.items():
        print(f'  {pct(v, .5):6.2f} / {pct(v, .9):6.2f}  {name}')
print(f'database (intake half and the rest, not the echo bot): requests waited {db_wait:.0f} s in all for the connection, executed {db_exec:.1f} s')
