"""Matplotlib figures of the report (Agg backend, 150 dpi PNGs)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 150


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def per_case_bars(path: str, cases: list[str], series: dict[str, list[float | None]], title: str) -> str:
    """Grouped bars: one group per case, one bar per (setting, protocol)."""
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(cases) + 2), 3.2))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(cases))
    for n, (name, values) in enumerate(series.items()):
        v = [np.nan if a is None else a for a in values]
        ax.bar(x + (n - (len(series) - 1) / 2) * width, v, width, label=name)
    ax.set_xticks(x, cases, rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (volume)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def dice_along_z(path: str, panels: list[tuple[str, dict[str, list[float | None]], list[int], list[int], int]]) -> str | None:
    """One panel per case: Dice per slice of each series; grey: ground-truth area; marks: prompted slices.

    A None value (the protocol never segmented that slice) is a gap in the line, not a score.
    """
    n = len(panels)
    if n == 0:
        return None
    cols = min(2, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 2.4 * rows), squeeze=False)
    for ax, (case, series, area, anchors, k0) in zip(axes.flat, panels):
        z = k0 + np.arange(len(area))  # slice index of the original volume (the evaluated grid may be a crop)
        twin = ax.twinx()
        twin.fill_between(z, area, color="0.85", step="mid")
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        for name, values in series.items():
            v = np.array([np.nan if a is None else a for a in values], dtype=float)
            ax.plot(z, v, lw=1, marker=".", ms=2, label=name)
        for k in anchors:
            ax.axvline(k, color="k", lw=0.6, ls=":")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(case, fontsize=8)
        ax.set_xlabel("slice k", fontsize=7)
        ax.set_ylabel("Dice", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6)
    return _save(fig, path)


def draw_prompts(ax, steps: list[dict], gt: np.ndarray) -> None:
    """Points (green + positive, red x negative), boxes (blue), ground-truth mask prompts (cyan, dashed)."""
    for s in steps:
        if s["kind"] == "mask":
            ax.contour(gt, levels=[0.5], colors="cyan", linewidths=1.2, linestyles="dashed")
        elif s["kind"] == "box":
            x0, y0, x1, y1 = s["box"]
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, ec="deepskyblue", lw=1.2))
        else:
            for (x, y), lab in zip(s["points"], s["labels"]):
                ax.plot(x, y, marker="+" if lab else "x", color="lime" if lab else "red", ms=8, mew=2)


def worst_overlays(path: str, items: list[tuple], title: str) -> str:
    """Image with ground truth (green) and prediction (red) contours, and the prompts given on that slice.

    ``items``: (caption, [3, H, W] image/gt/pred) or (caption, array, steps on that slice).
    """
    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(max(4.0, 2.8 * n), 3.3), squeeze=False)
    for ax, item in zip(axes.flat, items):
        caption, (img, gt, pred) = item[0], item[1]
        ax.imshow(img, cmap="gray", interpolation="nearest")
        if gt.any():
            ax.contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=0.8)
        if len(item) > 2:
            draw_prompts(ax, item[2], gt)
        ax.set_title(caption, fontsize=6)
        ax.axis("off")
    fig.suptitle(title + "\n(green: ground truth, red: prediction)", fontsize=7)
    return _save(fig, path)
