"""results.csv (one row per setting, case, label, protocol) and results.json (everything)."""

from __future__ import annotations

import csv
import json
import os

from . import report

SCOPES = ("volume", "zrange", "salient")
METRICS = ("dice", "iou", "nsd")


def rows(records: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        for r in rec["results"]:
            if r.get("absent"):
                out.append({"setting": rec["setting"], "case": rec["case"], "label": r["label"], "protocol": "",
                            "note": "label absent"})
                continue
            row = {"setting": rec["setting"], "case": rec["case"], "label": r["label"], "protocol": r["protocol"]}
            for scope in SCOPES:
                for m in METRICS:
                    v = r["metrics"][scope][m]
                    row[f"{scope}_{m}"] = "" if v is None else round(v, 6)
            row["salient_slices"] = r["metrics"]["salient"]["slices"]
            row["anchor_slice"] = "" if r["anchor"] is None else r["anchor"] + rec["crop"][0]
            row["propagate_from"], row["propagate_to"] = (
                (r["propagate"][0] + rec["crop"][0], r["propagate"][1] + rec["crop"][0]) if r["propagate"] else ("", "")
            )
            row["crop_from"], row["crop_to"] = rec["crop"]
            row["slices_processed"] = r["slices_processed"]
            row["seconds"] = r["seconds"]
            row["seconds_per_slice"] = round(r["seconds"] / max(1, r["slices_processed"]), 4)
            row["note"] = ""
            out.append(row)
    return out


def write_all(store, config: dict, records: list[dict]) -> dict:
    table = rows(records)
    csv_path = os.path.join(store.out, "results.csv")
    fields = list(dict.fromkeys(k for row in table for k in row))
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(table)
    json_path = os.path.join(store.out, "results.json")
    with open(json_path, "w") as f:
        json.dump({"config": config, "note": "slice indices in 'steps', 'anchor', 'propagate', 'worst_slices' and "
                   "per-slice lists are on the evaluated grid: add crop[0] for the original volume",
                   "cases": records}, f, indent=1)
    report_path = report.write(store, config, records, table) if config.get("report", True) else None
    return {"csv": csv_path, "json": json_path, "report": report_path}
