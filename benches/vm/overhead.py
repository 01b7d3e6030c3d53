#!/usr/bin/env python3
"""Orchestration overhead on real nodes, from one `kubeboot apply --output json` event stream.

Per node: the wall time from its connection (node_connecting) to node_finished, against the sum of its tasks' own
durations (task_finished duration_ms, guards included, as measured by kubeboot around each remote command). The
difference is what kubeboot adds: connecting, sudo, uploads of copy tasks, journal writes and the round trips
between tasks. A retried task's failed attempts count as the task's own time (started -> task_retrying) and the
waits between attempts (delay_ms) are shown apart: neither is orchestration.

    python3 benches/vm/overhead.py events.json
"""

import json
import sys
from datetime import datetime


def ts(e):
    return datetime.fromisoformat(e["ts"].replace("Z", "+00:00")[:26] + "+00:00").timestamp()


def main(path):
    start, end, tasks, count, delay, attempt = {}, {}, {}, {}, {}, {}
    for line in open(path):
        try:
            e = json.loads(line)
        except ValueError:
            continue
        node = e.get("node")
        if e["event"] == "node_connecting":
            start.setdefault(node, ts(e))
        elif e["event"] == "task_started":
            attempt[(node, e["task"])] = ts(e)
        elif e["event"] == "task_retrying":
            began = attempt.get((node, e["task"]), ts(e))
            tasks[node] = tasks.get(node, 0) + 1000 * (ts(e) - began)
            delay[node] = delay.get(node, 0) + (e.get("delay_ms") or 0)
        elif e["event"] == "task_finished":
            if e.get("reason") == "done":
                continue
            tasks[node] = tasks.get(node, 0) + (e.get("duration_ms") or 0)
            count[node] = count.get(node, 0) + 1
        elif e["event"] == "node_finished":
            end[node] = ts(e)
    print("| node | tasks | wall | sum of task durations | retry waits | overhead | overhead per task |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for node in sorted(end):
        if node not in start:
            continue
        wall = end[node] - start[node]
        own = tasks.get(node, 0) / 1000
        waits = delay.get(node, 0) / 1000
        extra = wall - own - waits
        n = max(count.get(node, 0), 1)
        print(f"| {node} | {count.get(node, 0)} | {wall:.1f} s | {own:.1f} s | {waits:.0f} s | {extra:.1f} s "
              f"({100 * extra / wall:.1f} %) | {1000 * extra / n:.0f} ms |")


if __name__ == "__main__":
    main(sys.argv[1])
