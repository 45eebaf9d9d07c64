"""Matplotlib figures of the report, small PNGs (Agg backend, modest dpi)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 80


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


def dice_along_z(path: str, panels: list[tuple[str, dict[str, list[float]], list[int], list[int], int]]) -> str:
    """One panel per case: Dice per slice of each series; grey: ground-truth area; marks: prompted slices."""
    n = len(panels)
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
            ax.plot(z, values, lw=1, label=name)
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


def worst_overlays(path: str, items: list[tuple[str, np.ndarray]], title: str) -> str:
    """Image with ground truth (green) and prediction (red) contours; ``items``: (caption, [3, H, W])."""
    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.9), squeeze=False)
    for ax, (caption, (img, gt, pred)) in zip(axes.flat, items):
        ax.imshow(img, cmap="gray", interpolation="nearest")
        if gt.any():
            ax.contour(gt, levels=[0.5], colors="lime", linewidths=0.8)
        if pred.any():
            ax.contour(pred, levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(caption, fontsize=6)
        ax.axis("off")
    fig.suptitle(title + "  (green: ground truth, red: prediction)", fontsize=8)
    return _save(fig, path)
