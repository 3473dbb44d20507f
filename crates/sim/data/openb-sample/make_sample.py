"""Rebuild this sample from the full openb trace (kept for provenance; not needed to run).

Usage: python3 make_sample.py ../../../../../shared/data/openb

Pods: every pod of openb_pod_list_default.csv created in [12,400,000 s, 12,530,000 s), the
busiest 36 hours of the trace (383 pods, peak concurrent GPU demand ~31 GPUs), times unchanged.
Nodes: the first two G2 (8 GPUs), T4 (2 GPUs) and P100 (2 GPUs) nodes of
openb_node_list_gpu_node.csv: 6 nodes, 24 GPUs, so the sample queues and the policies differ.
"""
import csv
import sys

src = sys.argv[1]
with open(f"{src}/openb_pod_list_default.csv") as f:
    rows = list(csv.reader(f))
with open("openb_pod_list_default.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(rows[0])
    for r in rows[1:]:
        if 12_400_000 <= int(r[8]) < 12_530_000:
            w.writerow(r)
with open(f"{src}/openb_node_list_gpu_node.csv") as f:
    nodes = list(csv.reader(f))
want = {("G2", "8"): 2, ("T4", "2"): 2, ("P100", "2"): 2}
with open("openb_node_list_gpu_node.csv", "w", newline="") as f:
    w = csv.writer(f, lineterminator="\n")
    w.writerow(nodes[0])
    for r in nodes[1:]:
        k = (r[4], r[3])
        if want.get(k, 0) > 0:
            want[k] -= 1
            w.writerow(r)
