"""`python examples/live_systems/loki/make_streams.py`: streams.json, the Loki recording of INC-2026-041.

The kubernetes recording's pod logs verbatim (what `kubectl logs` shows is what Loki holds), plus the
earlier history those logs no longer hold (since the 07:40 deploy), in the same format; deterministic.
"""

import json
import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
K8S = HERE.parent / "kubernetes" / "namespaces"
OUT = HERE / "streams.json"
rnd = random.Random(41)
DAY = datetime(2026, 12, 1, tzinfo=UTC)


def t(h, m, s=0.0):
    return DAY + timedelta(hours=h, minutes=m, seconds=s)


def fmt(dt):
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_ts(line):
    m = re.match(r"ts=(\S+) ", line)
    return datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))


def ns(dt):
    return str(int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000)


streams = {}


def add(labels, line):
    streams.setdefault(tuple(sorted(labels.items())), set()).add(line)


def labels(namespace, app, pod, stream="stdout"):
    return {"namespace": namespace, "app": app, "pod": pod, "container": app, "job": f"{namespace}/{app}", "stream": stream}


def recorded(path):
    return [text for text in path.read_text().splitlines() if text.strip()]


def line(dt, rest):
    return f"ts={fmt(dt)} {rest}"


# gateway-core: restarts and start times from the kubernetes recording's pods.json
pods = json.loads((K8S / "payments/pods.json").read_text())["items"]
for pod in pods:
    name = pod["metadata"]["name"]
    app = pod["metadata"]["labels"]["app"]
    lab = labels("payments", app, name)
    kept = []
    for f in sorted((K8S / "payments/logs").glob(f"{name}*.log")):
        kept += recorded(f)
    for text in kept:
        add(lab, text)
    earliest = min(parse_ts(text) for text in kept)
    if app == "ledger-service":
        count, cur = 520, t(7, 0, rnd.randint(0, 40))
        while cur < t(8, 39):
            count += rnd.randint(28, 40)
            add(lab, line(cur, f'level=info msg="entries posted" count={count} p99_ms={rnd.randint(38, 41)}'))
            cur += timedelta(seconds=253 + rnd.randint(-5, 5))
        continue
    restarts = pod["status"]["containerStatuses"][0]["restartCount"]
    runs_in_logs = (
        1
        if kept[0] == recorded(K8S / f"payments/logs/{name}.log")[0]
        and recorded(K8S / f"payments/logs/{name}.log") == recorded(K8S / f"payments/logs/{name}.previous.log")
        else 2
    )
    history_runs = restarts + 1 - runs_in_logs
    start = datetime.fromisoformat(pod["status"]["startTime"].replace("Z", "+00:00")) + timedelta(seconds=6.1)
    span = (earliest - start).total_seconds() / history_runs  # one run, OOMKill and back-off
    for r in range(history_runs):
        t0 = start + timedelta(seconds=span * r)
        add(lab, line(t0, 'level=info msg="starting gateway-core" version=2.42.0 commit=9f3c2ab go=go1.23.4 GOMEMLIMIT=unset'))
        add(lab, line(t0 + timedelta(seconds=0.2), 'level=info msg="routing cache enabled" mode=per-merchant max_entries=0'))
        add(
            lab,
            line(
                t0 + timedelta(seconds=0.5),
                'level=error msg="db connect failed password=Sup3rS3cret!2026" host=ledger-db.payments.svc:5432 attempt=1',
            ),
        )
        add(lab, line(t0 + timedelta(seconds=2.5), 'level=info msg="db connected" host=ledger-db.payments.svc:5432 attempt=2'))
        add(lab, line(t0 + timedelta(seconds=3.0), 'level=info msg="listening" addr=:8080'))
        # growth to the 1Gi limit over the run's life (~80% of the span; the rest is back-off)
        life = span * 0.8
        steps = 8
        for k in range(1, steps + 1):
            at = t0 + timedelta(seconds=3 + life * k / steps + rnd.uniform(-3, 3))
            entries = int(182344 * k / 7) + rnd.randint(-900, 900) if k != 7 else 182344
            heap = min(1008, 212 + int(736 * (k - 1) / 6)) if k != 7 else 948
            add(lab, line(at, f'level=info msg="routing cache grew" entries={entries} heap_mb={heap}'))
            if heap >= 820:
                add(
                    lab,
                    line(at + timedelta(seconds=7.5), f'level=warn msg="gc pause long" pause_ms={110 + 5 * k} heap_mb={heap}'),
                )
            if at > t(7, 52) and k >= 5:
                trace = f"{rnd.getrandbits(128):032x}"
                while re.search(r"\d{10}", trace):  # a long digit run reads as a card number to the masker
                    trace = f"{rnd.getrandbits(128):032x}"
                fail = at + timedelta(seconds=12.2)
                add(
                    lab,
                    line(
                        fail,
                        f'level=error msg="acquirer call failed" acquirer=northbank err="context deadline exceeded" status=503 '
                        f"trace_id={trace} merchant_id=m_{rnd.randint(10000, 99999)}",
                    ),
                )
                add(
                    lab,
                    line(
                        fail + timedelta(milliseconds=101),
                        f'level=info msg="ledger post" target=ledger-service status=200 trace_id={trace} '
                        f"duration_ms={rnd.randint(30, 45)}",
                    ),
                )

# settlement: the 02:00 CronJob run, verbatim
for text in recorded(K8S / "settlement/logs/settlement-batch-29411520-x7k2p.log"):
    add(labels("settlement", "settlement-batch", "settlement-batch-29411520-x7k2p", "stderr"), text)

# kube-system: coredns (must never be readable through the connector)
for pod in ("coredns-5d78c9869d-q8w2x", "coredns-5d78c9869d-z4n7v"):
    cur = t(8, 0, rnd.randint(0, 30))
    while cur < t(8, 59, 50):
        add(
            labels("kube-system", "coredns", pod),
            f"[INFO] 10.244.{rnd.randint(1, 3)}.{rnd.randint(10, 60)}:{rnd.randint(30000, 60000)} - {rnd.randint(1000, 9999)} "
            f'"A IN ledger-db.payments.svc.cluster.local. udp 56 false 512" NOERROR qr,aa,rd 112 0.000{rnd.randint(100, 999)}s',
        )
        cur += timedelta(seconds=240 + rnd.randint(0, 60))

out = []
for key, lines in streams.items():
    lab = dict(key)
    if lab["app"] == "coredns":
        # coredns lines carry no ts=: spread them as generated (regenerate times deterministically)
        base = t(8, 0, 17)
        values = [(base + timedelta(seconds=263 * i), text) for i, text in enumerate(sorted(lines))]
    else:
        values = [(parse_ts(text), text) for text in lines]
    values.sort(key=lambda v: v[0], reverse=True)  # Loki's backward order
    out.append({"stream": lab, "values": [[ns(w), text] for w, text in values]})
out.sort(key=lambda s: (s["stream"]["namespace"], s["stream"]["app"], s["stream"]["pod"]))
OUT.write_text(json.dumps(out, indent=1) + "\n")
print(sum(len(s["values"]) for s in out), "lines", len(out), "streams")
