"""Rebuild this sample from the full openb trace (kept for provenance; not needed to run).

Usage: python3 make_sample.py ../../../../../shared/data/openb

Nodes: every 10th row of openb_node_list_gpu_node.csv (rows 1, 11, 21, ...): 122 nodes with the
full list's mix of models. Pods: every 10th row of openb_pod_list_default.csv (rows 1, 11, ...):
816 pods with the full list's mix of shapes. Rows and columns are unchanged.
"""
import csv
import sys

src = sys.argv[1]
for name in ["openb_node_list_gpu_node.csv", "openb_pod_list_default.csv"]:
    with open(f"{src}/{name}") as f:
        rows = list(csv.reader(f))
    with open(name, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(rows[0])
        for i, r in enumerate(rows[1:]):
            if i % 10 == 0:
                w.writerow(r)
