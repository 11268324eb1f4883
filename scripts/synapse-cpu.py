#!/usr/bin/env python3
"""Where a benchmark's Synapse spent its CPU, from its access log.

Synapse logs every request it answers with the CPU the request used in its
own context ("Processed request: ... (utime, stime) ..."). This sums that
CPU by who asked (the intake bot, the echo bot, visitors, counsellors) and
by endpoint, split at the first request of the echo bot (the load
generator runs the intake half first, then the echo half).

Work Synapse does outside a request (persisting events, the notifier,
pushing to waiting syncs) is not in these figures; the total is printed
beside the sum so the share that is attributed is visible.

    python3 scripts/synapse-cpu.py /tmp/intake-synapse-*/synapse.log
"""
import re
import sys
from collections import defaultdict

LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .*? \{(?P<who>[^}]*)\} Processed request: "
    r"(?P<real>[\d.]+)sec/[\d.]+sec (?:ru=)?\((?P<ut>[\d.]+)sec, (?P<st>[\d.]+)sec\).*?"
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP'
)
# Ids in paths are replaced so that one endpoint sums as one row.
IDS = [
    (re.compile(r"\?.*$"), ""),
    (re.compile(r"/(!|%21)[^/]+"), "/{room}"),
    (re.compile(r"/(@|%40)[^/]+"), "/{user}"),
    (re.compile(r"/(\$|%24)[^/]+"), "/{event}"),
    (re.compile(r"/send/([^/]+)/[^/]+$"), r"/send/\1/{txn}"),
    (re.compile(r"/sendToDevice/([^/]+)/[^/]+$"), r"/sendToDevice/\1/{txn}"),
    (re.compile(r"/_matrix/client/(v3|r0|v1|unstable)"), ""),
]


def who(entity: str) -> str:
    local = entity.lstrip("@").split(":")[0]
    for prefix, name in (("bot", "intake bot"), ("echo", "echo bot"), ("lv", "visitors"),
                         ("counsellor", "counsellors"), ("admin", "admin")):
        if local.startswith(prefix):
            return name
    return "unauthenticated" if entity in ("", "None") else "other"


def endpoint(method: str, path: str) -> str:
    for pattern, repl in IDS:
        path = pattern.sub(repl, path)
    return f"{method} {path}"


def main(path: str) -> None:
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if m:
                rows.append(m)
    if not rows:
        sys.exit(f"no 'Processed request' lines in {path}")
    split = next((m["ts"] for m in rows if who(m["who"]) == "echo bot"), None)
    halves = {"intake": defaultdict(lambda: [0, 0.0, 0.0]), "echo": defaultdict(lambda: [0, 0.0, 0.0])}
    for m in rows:
        half = "echo" if split and m["ts"] >= split else "intake"
        cpu = float(m["ut"]) + float(m["st"])
        for key in ((who(m["who"]), "*"), (who(m["who"]), endpoint(m["method"], m["path"]))):
            acc = halves[half][key]
            acc[0] += 1
            acc[1] += cpu
            acc[2] += float(m["real"])
    for half, acc in halves.items():
        if not acc:
            continue
        # Requesters by their total CPU, each with its "(all)" row first.
        by_requester = {w: v[1] for (w, e), v in acc.items() if e == "*"}
        total = sum(by_requester.values())
        print(f"\n## {half} half: {total:.1f} CPU s attributed to requests\n")
        print("| requester | endpoint | requests | CPU s | CPU ms/request | wall s (sum) |")
        print("|---|---|---|---|---|---|")
        ordered = sorted(acc.items(), key=lambda kv: (-by_requester[kv[0][0]], kv[0][1] != "*", -kv[1][1]))
        for (w, e), (n, cpu, real) in ordered:
            if e != "*" and cpu < 0.02 * total:
                continue
            name = f"**{w}**" if e == "*" else w
            print(f"| {name} | {'(all)' if e == '*' else e} | {n} | {cpu:.1f} | {1000 * cpu / n:.1f} | {real:.0f} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
