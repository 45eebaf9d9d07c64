"""The Markdown report: configuration, summary table, per-case bars, Dice along z, worst slices."""

from __future__ import annotations

import datetime
import os
import re
import shlex

import numpy as np

from . import figures

BANNER = "**RANDOM WEIGHTS: plumbing only, not accuracy.** The SAM 2 network had no trained checkpoint."


def _fmt(v) -> str:
    return "–" if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _mean_sd(values: list) -> str:
    v = [x for x in values if x not in (None, "")]
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write(store, config: dict, records: list[dict], table: list[dict]) -> str:
    figdir = os.path.join(store.out, "figures")
    os.makedirs(figdir, exist_ok=True)
    random = [s["name"] for s in config["settings"] if str(s["conf"].get("random_weights", "")).lower() in ("1", "true", "yes", "on")]
    lines = ["# SAM 2 3D propagation: evaluation report", ""]
    if random:
        lines += [f"> {BANNER} Settings with random weights: {', '.join(random)}.", ""]
    lines += [
        "Command:", "", "```", config.get("command") or "(not recorded)", "```", "",
        f"- generated: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- dataset: `{config['dataset']}` (format {config['format']}"
        + (f", modality {config['modality']}" if config.get("modality") else "") + f"), {len({r['case'] for r in records})} cases",
        f"- labels: {', '.join(config['labels'])}; protocols: {', '.join(config['protocols'])}",
        f"- propagation range for mask/clicks: **{config['range']}** (box always propagates over the object's "
        "z-range; slice2d does not propagate)",
        f"- z-crop before evaluation: "
        + (f"object z-range ± {config['z_margin']} slices" if config.get("z_margin") is not None else "none")
        + (f", at most {config['max_slices']} slices" if config.get("max_slices") else ""),
        f"- NSD tolerance {config['nsd_tolerance']} mm; salient slices: > 256 ground-truth pixels; "
        "scopes: volume (all evaluated slices), zrange (object's first..last slice), salient",
        "", "Settings:", "", "| setting | options |", "|---|---|",
    ]
    lines += [f"| {s['name']} | {', '.join(f'{k}={v}' for k, v in s['conf'].items())} |" for s in config["settings"]]
    lines += ["", "## Summary (mean ± sd over cases)", "",
              "| setting | label | protocol | cases | Dice | IoU | NSD | Dice zrange | Dice salient | NSD salient "
              "| s/case | s/slice |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        if row.get("protocol"):
            groups.setdefault((row["setting"], row["label"], row["protocol"]), []).append(row)
    for (s, lab, p), rs in groups.items():
        col = lambda k: [r[k] for r in rs]  # noqa: E731
        lines.append(
            f"| {s} | {lab} | {p} | {len(rs)} | {_mean_sd(col('volume_dice'))} | {_mean_sd(col('volume_iou'))} "
            f"| {_mean_sd(col('volume_nsd'))} | {_mean_sd(col('zrange_dice'))} | {_mean_sd(col('salient_dice'))} "
            f"| {_mean_sd(col('salient_nsd'))} | {np.mean(col('seconds')):.1f} | {np.mean(col('seconds_per_slice')):.3f} |"
        )
    lines += ["", "Per-case values: `results.csv`; prompts, per-slice Dice and everything else: `results.json`.", ""]
    lines += _per_case(figdir, records, table)
    lines += _along_z(figdir, records)
    lines += _worst(figdir, store, records)
    path = os.path.join(store.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _series_name(setting: str, protocol: str, multi: bool) -> str:
    return f"{setting}/{protocol}" if multi else protocol


def _per_case(figdir, records, table) -> list[str]:
    lines = ["## Per case", ""]
    cases = list(dict.fromkeys(r["case"] for r in records))
    multi = len({r["setting"] for r in records}) > 1
    for label in dict.fromkeys(row["label"] for row in table):
        series: dict[str, list] = {}
        for row in table:
            if row["label"] == label and row.get("protocol"):
                name = _series_name(row["setting"], row["protocol"], multi)
                series.setdefault(name, [None] * len(cases))[cases.index(row["case"])] = row["volume_dice"] or None
        png = figures.per_case_bars(os.path.join(figdir, f"per_case_{_safe(label)}.png"), cases, series,
                                    f"label {label}: Dice per case")
        lines += [f"![per-case Dice, label {label}](figures/{os.path.basename(png)})", ""]
    lines += ["| setting | case | label | protocol | Dice | IoU | NSD | Dice salient | s |", "|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        if row.get("protocol"):
            lines.append(f"| {row['setting']} | {row['case']} | {row['label']} | {row['protocol']} | {_fmt(row['volume_dice'])} "
                         f"| {_fmt(row['volume_iou'])} | {_fmt(row['volume_nsd'])} | {_fmt(row['salient_dice'])} | {row['seconds']:.1f} |")
        else:
            lines.append(f"| {row['setting']} | {row['case']} | {row['label']} | – | {row['note']} | | | | |")
    return lines + [""]


def _along_z(figdir, records) -> list[str]:
    lines = ["## Dice per slice along z", "", "Grey: ground-truth area per slice; dotted: the prompted slice.", ""]
    multi = len({r["setting"] for r in records}) > 1
    labels = dict.fromkeys(r["label"] for rec in records for r in rec["results"] if not r.get("absent"))
    for label in labels:
        panels: dict[str, tuple] = {}
        for rec in records:
            for r in rec["results"]:
                if r.get("absent") or r["label"] != label:
                    continue
                _, series, area, anchors, k0 = panels.setdefault(
                    rec["case"], (rec["case"], {}, r["gt_area"], set(), rec["crop"][0]))
                series[_series_name(rec["setting"], r["protocol"], multi)] = r["per_slice_dice"]
                if r["anchor"] is not None:
                    anchors.add(r["anchor"] + k0)
        png = figures.dice_along_z(os.path.join(figdir, f"dice_along_z_{_safe(label)}.png"),
                                   [(c, s, a, sorted(k), k0) for c, s, a, k, k0 in panels.values()])
        lines += [f"![Dice along z, label {label}](figures/{os.path.basename(png)})", ""]
    return lines


def _worst(figdir, store, records, per_figure: int = 4) -> list[str]:
    lines = ["## Worst slices", "", "The lowest-Dice salient slices over all cases (slice index on the original volume).", ""]
    by_key: dict[tuple, list] = {}
    for rec in records:
        arrays = None
        for r in rec["results"]:
            if r.get("absent"):
                continue
            for n, k in enumerate(r["worst_slices"]):
                by_key.setdefault((rec["setting"], r["label"], r["protocol"]), []).append(
                    (r["per_slice_dice"][k], rec["setting"], rec["case"], k + rec["crop"][0], f"{r['label']}__{r['protocol']}__worst{n}"))
    for (setting, label, protocol), items in by_key.items():
        items = sorted(items, key=lambda t: (t[0], t[2], t[3]))[:per_figure]
        panels = []
        for dice, s, case, k, key in items:
            arrays = store.arrays(s, case)
            if key in arrays:
                panels.append((f"{case}\nk={k}  Dice {dice:.2f}", arrays[key]))
        if not panels:
            continue
        png = figures.worst_overlays(os.path.join(figdir, f"worst_{_safe(setting)}_{_safe(label)}_{_safe(protocol)}.png"),
                                     panels, f"{setting} / {label} / {protocol}")
        lines += [f"### {setting} / {label} / {protocol}", "", f"![worst slices](figures/{os.path.basename(png)})", ""]
    return lines
