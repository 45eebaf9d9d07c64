"""The Markdown report: configuration, summary table, per-case bars, Dice along z, worst slices."""

from __future__ import annotations

import datetime
import os
import re

import numpy as np

from ..common import parse_bool
from . import figures

BANNER = "**RANDOM WEIGHTS: plumbing only, not accuracy.** The SAM 2 network had no trained checkpoint."


def _fmt(v) -> str:
    return "–" if v is None or v == "" or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def _mean_sd(values: list) -> str:
    v = [x for x in values if x not in (None, "")]
    if not v:
        return "–"
    return f"{np.mean(v):.3f} ± {np.std(v):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _ok_results(records, setting, label, protocol):
    for rec in records:
        if rec["setting"] != setting:
            continue
        for r in rec["results"]:
            if r.get("status", "ok") == "ok" and r["label"] == label and r["protocol"] == protocol:
                yield rec, r


def slice_pooled(records, setting: str, label: str, protocol: str) -> dict:
    """Gutiérrez et al.'s aggregation (i3uex/sam join_results.py): the mean over every scored slice of
    every volume, as one pool (``per_slice_dice`` is None where the protocol never segmented)."""
    dice, iou = [], []
    for _, r in _ok_results(records, setting, label, protocol):
        dice += [d for d in r["per_slice_dice"] if d is not None]
        iou += [v for v in r.get("per_slice_iou", []) if v is not None]
    return {"slices": len(dice), "dice": float(np.mean(dice)) if dice else None,
            "iou": float(np.mean(iou)) if iou else None}


def case_mean(records, setting: str, label: str, protocol: str) -> float | None:
    """This project's aggregation: the mean over cases of each case's mean slice Dice."""
    means = [np.mean([d for d in r["per_slice_dice"] if d is not None])
             for _, r in _ok_results(records, setting, label, protocol) if any(d is not None for d in r["per_slice_dice"])]
    return float(np.mean(means)) if means else None


def _papers_own(records) -> list[str]:
    """The figures that exist only for some protocols: each paper's own aggregation beside ours."""
    lines = []
    groups = dict.fromkeys((rec["setting"], r["label"], r["protocol"]) for rec in records for r in rec["results"]
                           if r.get("status", "ok") == "ok")
    shen = [(g, [r for _, r in _ok_results(records, *g)]) for g in groups if g[2].startswith("shen2024")]
    if shen:
        lines += ["### Shen et al.: NSD on the reference's stack and in anatomical order", "",
                  "segment_any_image.py stacks the frames in the order its two passes returned them (prompt .. end, "
                  "then prompt - 1 .. start) and computes MONAI's NSD on that stack; *anatomical* is the same NSD on "
                  "the slices in order (the corrected figure).", "",
                  "| setting | label | protocol | mode | paper NSD (reference stack) | NSD (anatomical order) |",
                  "|---|---|---|---|---|---|"]
        for (s, lab, p), rs in shen:
            lines.append(f"| {s} | {lab} | {p} | {'exact' if any(r.get('exact') for r in rs) else 'ours'} "
                         f"| {_mean_sd([r['metrics']['paper']['nsd'] for r in rs])} "
                         f"| {_mean_sd([r['metrics']['paper'].get('nsd_anatomical') for r in rs])} |")
        lines.append("")
    gut = [g for g in groups if g[2].startswith("gutierrez")]
    if gut:
        lines += ["### Gutiérrez et al.: the paper's aggregation beside ours", "",
                  "The paper (join_results.py) averages over all slices of all volumes pooled; ours is the mean of "
                  "the per-case means.", "",
                  "| setting | label | protocol | slices | paper Dice (pooled slices) | paper Jaccard | ours: mean of case means |",
                  "|---|---|---|---|---|---|---|"]
        for g in gut:
            pooled = slice_pooled(records, *g)
            lines.append(f"| {g[0]} | {g[1]} | {g[2]} | {pooled['slices']} | {_fmt(pooled['dice'])} | {_fmt(pooled['iou'])} "
                         f"| {_fmt(case_mean(records, *g))} |")
        lines.append("")
    cvpr = [(g, [(rec, r) for rec, r in _ok_results(records, *g)]) for g in groups if g[2] == "cvpr25-interactive"]
    if cvpr:
        lines += ["### CVPR 2025 interactive 3D: per round", "",
                  "Round 0: the 3D box; rounds 1-5: one click each, every round through the session verbs "
                  "(`set_prompts`/`update_prompts` + `propagate`, incremental). DSC_AUC / NSD_AUC: trapezoid over the 5 "
                  "click rounds (CVPR25_iter_eval.py); NSD is 0 when DSC <= 0.2. Seconds: the verbs' wall time per "
                  "interaction.", "",
                  "| setting | label | case | DSC per round | NSD per round | DSC_AUC | NSD_AUC | final DSC | final NSD | s / interaction |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for (s, lab, _), items in cvpr:
            for rec, r in items:
                rounds = r["info"]["rounds"]
                c = r["info"]["cvpr25"]
                dscs = " ".join("%.3f" % x["dsc"] for x in rounds)
                nsds = " ".join("%.3f" % x["nsd"] for x in rounds)
                lines.append(f"| {s} | {lab} | {rec['case']} | {dscs} | {nsds} | {c['dsc_auc']:.3f} | {c['nsd_auc']:.3f} "
                             f"| {c['dsc_final']:.3f} | {c['nsd_final']:.3f} | {c['seconds_per_interaction']:.2f} |")
        lines.append("")
    return (["## The papers' own figures", ""] + lines) if lines else []


def _random_weights(conf: dict) -> bool:
    try:
        return parse_bool(conf.get("random_weights", False))
    except ValueError:  # the run itself refused such a value; the report still reads its config
        return False


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def write(store, config: dict, records: list[dict], table: list[dict]) -> str:
    figdir = os.path.join(store.out, "figures")
    os.makedirs(figdir, exist_ok=True)
    lines = _header(config, records) + _hardware(records) + _summary(config, table) + _encoding(table)
    lines += _skipped_and_failed(table)
    lines += ["", "Per-case values: `results.csv`; prompts, per-slice Dice and everything else: `results.json`.", ""]
    lines += _papers_own(records)
    lines += _per_case(figdir, records, table)
    lines += _along_z(figdir, records)
    lines += _prompts(figdir, store, records)
    lines += _worst(figdir, store, records)
    path = os.path.join(store.out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _header(config: dict, records: list[dict]) -> list[str]:
    """The title, the random-weights banner, the command, what was evaluated how, and the settings."""
    random = [s["name"] for s in config["settings"] if _random_weights(s["conf"])]
    lines = ["# SAM 2 3D propagation: evaluation report", ""]
    if random:
        lines += [f"> {BANNER} Settings with random weights: {', '.join(random)}.", ""]
    lines += [
        "Command:", "", "```", config.get("command") or "(not recorded)", "```", "",
        f"- generated: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- dataset: `{config['dataset']}` (format {config['format']}"
        + (f", modality {config['modality']}" if config.get("modality") else "") + f"), {len({r['case'] for r in records})} cases",
        f"- labels: {', '.join(config['labels'])}; protocols: {', '.join(config['protocols'])}",
        f"- this project's `mask`/`clicks` propagate over **{config['range']}**, its `box` over the object's z-range; "
        "the papers' protocols use their own ranges (the video for shen2024-*, the whole volume for medsam2-box)",
        "- z-crop before evaluation: "
        + (f"object z-range ± {config['z_margin']} slices" if config.get("z_margin") is not None else "none")
        + (f", at most {config['max_slices']} slices" if config.get("max_slices") else ""),
        f"- NSD tolerance {config['nsd_tolerance']} mm (MONAI and surfel NSD; the Shen et al. paper NSD uses "
        "MONAI at 1 voxel, as its reference code). Each protocol is scored over its own slices: the video "
        "(shen2024-*), the volume (medsam2-box, mask/clicks), the slices holding the object (gutierrez2023-lung)",
        "- mode: " + ("**paper-exact** (`--exact`): the papers' protocols use their reference code's frames, "
                      "state handling and released prompt rules (docs/evaluation.md)" if config.get("exact")
                      else "this project's run of each recipe (`--exact` for the papers' reference code step by step)"),
        "", "Settings:", "", "| setting | options |", "|---|---|",
    ]
    return lines + [f"| {s['name']} | {', '.join(f'{k}={v}' for k, v in s['conf'].items())} |" for s in config["settings"]]


def _hardware(records: list[dict]) -> list[str]:
    lines = ["", "## Hardware (timings are only comparable on the same)", "",
             "| setting | device | CPU | torch threads | GPU |", "|---|---|---|---|---|"]
    seen = set()
    for rec in records:
        hw = rec.get("hardware", {})
        row = (rec["setting"], rec.get("device", ""), hw.get("cpu", ""), hw.get("torch_threads", ""), hw.get("gpu") or "–")
        if row not in seen:
            seen.add(row)
            lines.append("| " + " | ".join(str(v) for v in row) + " |")
    return lines


def _summary(config: dict, table: list[dict]) -> list[str]:
    """Mean ± sd of every metric per (setting, label, protocol)."""
    lines = ["", "## Summary (mean ± sd over the cases that ran)", "",
             "*paper*: the numbers the protocol's reference code prints (see the last column); the other columns "
             "give every convention for every protocol. Dice pooled = one 3D Dice over the scored slices; "
             "slice mean = mean 2D Dice over the scored slices holding the object; NSD MONAI counts boundary "
             "voxels, NSD surfel weighs surface elements by area (DeepMind surface-distance), both at "
             f"{config['nsd_tolerance']} mm. *w/o prompt slice*: Dice without the slice whose ground truth was "
             "the prompt (it scores 1.0 by construction). Encoding (all slices, once per case) is timed apart "
             "from the protocols, which only prompt and propagate.", "",
             "| setting | label | protocol | ok | skipped | failed | paper Dice | paper NSD | Dice pooled | Dice slice mean "
             "| NSD MONAI | NSD surfel | Dice pooled w/o prompt slice | s/protocol | s/slice | paper metric |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict[tuple, list[dict]] = {}
    for row in table:
        if row.get("protocol"):
            groups.setdefault((row["setting"], row["label"], row["protocol"]), []).append(row)
    for (s, lab, p), rs in groups.items():
        ok = [r for r in rs if r["status"] == "ok"]
        col = lambda k: [r[k] for r in ok]  # noqa: E731
        n = lambda st: sum(r["status"] == st for r in rs)  # noqa: E731
        secs = [float(v) for v in col("protocol_seconds") if v != ""]
        per = [float(v) for v in col("seconds_per_slice") if v != ""]
        lines.append(
            f"| {s} | {lab} | {p} | {len(ok)} | {n('skipped')} | {n('failed')} | {_mean_sd(col('paper_dice'))} "
            f"| {_mean_sd(col('paper_nsd'))} | {_mean_sd(col('dice_pooled'))} | {_mean_sd(col('dice_slice_mean'))} "
            f"| {_mean_sd(col('nsd_monai'))} | {_mean_sd(col('nsd_surfel'))} | {_mean_sd(col('dice_pooled_no_prompt_slice'))} "
            f"| {np.mean(secs) if secs else float('nan'):.2f} | {np.mean(per) if per else float('nan'):.3f} "
            f"| {ok[0]['paper_metric'] if ok else ''} |"
        )
    return lines


def _encoding(table: list[dict]) -> list[str]:
    enc = [(r["case"], r["encode_frames"], r["encode_seconds"]) for r in table if r.get("encode_seconds") != ""]
    if not enc:
        return []
    frames = sum(int(e[1]) for e in dict.fromkeys(enc))
    secs = sum(float(e[2]) for e in dict.fromkeys(enc))
    return ["", f"Image encoding: {frames} slices in {secs:.1f} s ({secs / max(1, frames):.3f} s/slice), "
            "counted once per case, before and apart from the protocols."]


def _skipped_and_failed(table: list[dict]) -> list[str]:
    bad = [r for r in table if r["status"] in ("failed", "skipped")]
    if not bad:
        return []
    lines = ["", "## Skipped and failed", "", "Skipped: the paper's reference code would not score it. "
             "Failed: an error; the rest of the run went on.", "",
             "| setting | case | label | protocol | status | reason |", "|---|---|---|---|---|---|"]
    return lines + [f"| {r['setting']} | {r['case']} | {r['label']} | {r['protocol'] or '–'} | {r['status']} "
                    f"| {str(r['reason']).replace('|', '/')} |" for r in bad]


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
                value = row["paper_dice"] if row["paper_dice"] != "" else row["dice_pooled"]
                series.setdefault(name, [None] * len(cases))[cases.index(row["case"])] = None if value == "" else value
        png = figures.per_case_bars(os.path.join(figdir, f"per_case_{_safe(label)}.png"), cases, series,
                                    f"label {label}: paper Dice (else pooled Dice) per case; no bar: not run")
        lines += [f"![per-case Dice, label {label}](figures/{os.path.basename(png)})", ""]
    lines += ["| setting | case | label | protocol | status | prompt slice | scored slices | paper Dice | paper NSD "
              "| Dice pooled | Dice slice mean | NSD MONAI | NSD surfel | s |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in table:
        if row["status"] == "ok":
            lines.append(f"| {row['setting']} | {row['case']} | {row['label']} | {row['protocol']} | ok | {row['prompt_slice']} "
                         f"| {row['scored_from']}–{row['scored_to']} | {_fmt(row['paper_dice'])} | {_fmt(row['paper_nsd'])} "
                         f"| {_fmt(row['dice_pooled'])} | {_fmt(row['dice_slice_mean'])} | {_fmt(row['nsd_monai'])} "
                         f"| {_fmt(row['nsd_surfel'])} | {row['protocol_seconds']:.1f} |")
        else:
            lines.append(f"| {row['setting']} | {row['case']} | {row['label']} | {row['protocol'] or '–'} | {row['status']} "
                         f"| | | | | | | | | |")
    return lines + [""]


def _along_z(figdir, records) -> list[str]:
    lines = ["## Dice per slice along z", "", "Grey: ground-truth area per slice; dotted: the prompted slice; a line "
             "is drawn only over the slices the protocol segmented (none elsewhere).", ""]
    multi = len({r["setting"] for r in records}) > 1
    labels = dict.fromkeys(r["label"] for rec in records for r in rec["results"] if r.get("status", "ok") == "ok")
    for label in labels:
        panels: dict[str, tuple] = {}
        for rec in records:
            for r in rec["results"]:
                if r.get("status", "ok") != "ok" or r["label"] != label:
                    continue
                _, series, area, anchors, k0 = panels.setdefault(
                    rec["case"], (rec["case"], {}, r["gt_area"], set(), rec["crop"][0]))
                series[_series_name(rec["setting"], r["protocol"], multi)] = r["per_slice_dice"]
                if r["anchor"] is not None:
                    anchors.add(r["anchor"] + k0)
        png = figures.dice_along_z(os.path.join(figdir, f"dice_along_z_{_safe(label)}.png"),
                                   [(c, s, a, sorted(k), k0) for c, s, a, k, k0 in panels.values()])
        if png is None:
            continue
        lines += [f"![Dice along z, label {label}](figures/{os.path.basename(png)})", ""]
    return lines


def _worst(figdir, store, records, per_figure: int = 4) -> list[str]:
    lines = ["## Worst slices", "", "The lowest-Dice salient slices over all cases (slice index on the original volume).", ""]
    by_key: dict[tuple, list] = {}
    for rec in records:
        arrays = None
        for r in rec["results"]:
            if r.get("status", "ok") != "ok":
                continue
            for n, k in enumerate(r["worst_slices"]):
                if r["per_slice_dice"][k] is None:  # never segmented: no score to show
                    continue
                by_key.setdefault((rec["setting"], r["label"], r["protocol"]), []).append(
                    (r["per_slice_dice"][k], rec["setting"], rec["case"], k + rec["crop"][0],
                     f"{r['label']}__{r['protocol']}__worst{n}", _steps_on(r["steps"], k)))
    for (setting, label, protocol), items in by_key.items():
        items = sorted(items, key=lambda t: (t[0], t[2], t[3]))[:per_figure]
        panels = []
        for dice, s, case, k, key, steps in items:
            arrays = store.arrays(s, case)
            if key in arrays:
                panels.append((f"{case}\nk={k}  Dice {dice:.2f}", arrays[key], steps))
        if not panels:
            continue
        png = figures.worst_overlays(os.path.join(figdir, f"worst_{_safe(setting)}_{_safe(label)}_{_safe(protocol)}.png"),
                                     panels, f"{setting} / {label} / {protocol}")
        lines += [f"### {setting} / {label} / {protocol}", "", f"![worst slices](figures/{os.path.basename(png)})", ""]
    return lines


def _steps_on(steps: list[dict], k: int) -> list[dict]:
    """The prompts given on slice k (the last state of each kind: clicks accumulate)."""
    on = [s for s in steps if s.get("k") == k]  # propagation steps have no slice of their own
    return on[-1:] if on else []


def _prompts(figdir, store, records, per_figure: int = 4) -> list[str]:
    """The prompted slice of each 3D protocol run, with its prompt drawn."""
    lines = ["## Prompts", "", "The prompted slice of each run (first cases): points (green +, red − ), box (blue), "
             "ground-truth mask prompt (cyan); green contour: ground truth, red: prediction.", ""]
    by_key: dict[tuple, list] = {}
    for rec in records:
        for r in rec["results"]:
            if r.get("status", "ok") != "ok" or r["anchor"] is None:
                continue
            by_key.setdefault((rec["setting"], r["label"], r["protocol"]), []).append((rec, r))
    for (setting, label, protocol), items in by_key.items():
        panels = []
        for rec, r in items[:per_figure]:
            key = f"{r['label']}__{r['protocol']}__anchor"
            arrays = store.arrays(setting, rec["case"])
            if key in arrays:
                k = r["anchor"] + rec["crop"][0]
                panels.append((f"{rec['case']}\nprompt on k={k}", arrays[key], _steps_on(r["steps"], r["anchor"])))
        if panels:
            png = figures.worst_overlays(
                os.path.join(figdir, f"prompt_{_safe(setting)}_{_safe(label)}_{_safe(protocol)}.png"),
                panels, f"{setting} / {label} / {protocol}: prompted slice")
            lines += [f"![prompts {protocol}](figures/{os.path.basename(png)})", ""]
    return lines
