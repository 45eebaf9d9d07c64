"""results.csv (one row per setting, case, label, protocol; the same columns in every run) and results.json."""

from __future__ import annotations

import csv
import json
import os

from . import report

# The CSV's columns, in this order, whatever the first case holds: a row that lacks a value leaves it
# empty. Metric names say their convention (docs/evaluation.md, "Metrics").
COLUMNS = (
    "setting", "case", "label", "protocol", "status", "reason",
    "paper_dice", "paper_iou", "paper_nsd", "paper_metric",
    "dice_pooled", "dice_slice_mean", "iou_pooled", "iou_slice_mean", "nsd_monai", "nsd_surfel", "nsd_tolerance_mm",
    "dice_pooled_no_prompt_slice", "dice_slice_mean_no_prompt_slice",
    "scored_from", "scored_to", "object_slices", "prompt_slice", "prompt_slice_source", "propagate_from", "propagate_to",
    "crop_from", "crop_to", "slices_processed", "encode_frames", "encode_seconds", "protocol_seconds",
    "seconds_per_slice", "device", "cpu", "torch_threads", "gpu",
    "exact", "paper_nsd_anatomical", "dsc_auc", "nsd_auc", "seconds_per_interaction",
)


def _r(v):
    return "" if v is None else round(v, 6) if isinstance(v, float) else v


def rows(records: list[dict]) -> list[dict]:
    out = []
    for rec in records:
        k0 = rec.get("crop", [0])[0]
        hw = rec.get("hardware", {})
        base = {"setting": rec["setting"], "case": rec["case"], "device": rec.get("device", ""),
                "cpu": hw.get("cpu", ""), "torch_threads": hw.get("torch_threads", ""), "gpu": hw.get("gpu") or "",
                "encode_frames": rec.get("encode", {}).get("frames", ""),
                "encode_seconds": rec.get("encode", {}).get("seconds", "")}
        if "crop" in rec:
            base["crop_from"], base["crop_to"] = rec["crop"]
        for r in rec["results"]:
            row = dict.fromkeys(COLUMNS, "")
            row.update(base)
            row.update({"label": r["label"], "protocol": r.get("protocol") or "", "status": r.get("status", "ok"),
                        "reason": r.get("reason", "")})
            if row["status"] == "ok":
                m = r["metrics"]
                paper = m.get("paper") or {}
                nops = m.get("no_prompt_slice") or {}
                row.update({
                    "paper_dice": _r(paper.get("dice")), "paper_iou": _r(paper.get("iou")),
                    "paper_nsd": _r(paper.get("nsd")), "paper_metric": paper.get("metric", ""),
                    **{k: _r(m[k]) for k in ("dice_pooled", "dice_slice_mean", "iou_pooled", "iou_slice_mean",
                                             "nsd_monai", "nsd_surfel", "nsd_tolerance_mm", "object_slices")},
                    "dice_pooled_no_prompt_slice": _r(nops.get("dice_pooled")),
                    "dice_slice_mean_no_prompt_slice": _r(nops.get("dice_slice_mean")),
                    "scored_from": m["scored"][0] + k0, "scored_to": m["scored"][1] + k0,
                    "prompt_slice": "" if r["anchor"] is None else r["anchor"] + k0,
                    "prompt_slice_source": (r.get("info") or {}).get("key_slice_source", ""),
                    "slices_processed": r["slices_processed"], "protocol_seconds": r["seconds"],
                    "seconds_per_slice": round(r["seconds"] / max(1, r["slices_processed"]), 4),
                    "exact": bool(r.get("exact")), "paper_nsd_anatomical": _r(paper.get("nsd_anatomical")),
                    "dsc_auc": _r(paper.get("dsc_auc")), "nsd_auc": _r(paper.get("nsd_auc")),
                    "seconds_per_interaction": _r(paper.get("seconds_per_interaction")),
                })
                if r["propagate"]:
                    row["propagate_from"], row["propagate_to"] = r["propagate"][0] + k0, r["propagate"][1] + k0
            out.append(row)
    return out


def write_all(store, config: dict, records: list[dict]) -> dict:
    table = rows(records)
    csv_path = os.path.join(store.out, "results.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(table)
    json_path = os.path.join(store.out, "results.json")
    with open(json_path, "w") as f:
        json.dump({"config": config, "note": "slice indices in 'steps', 'anchor', 'propagate', 'worst_slices', "
                   "'metrics.scored' and per-slice lists are on the evaluated grid: add crop[0] for the original "
                   "volume; per_slice_dice is null where the protocol never segmented that slice",
                   "cases": records}, f, indent=1)
    report_path = report.write(store, config, records, table) if config.get("report", True) else None
    return {"csv": csv_path, "json": json_path, "report": report_path}
