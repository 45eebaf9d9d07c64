"""Writing a model version: weights, config, exact parameters, the labels used, metrics and the curve.

The folder is written under a temporary name and renamed at the end, so an infer task never sees a
half-written version (``lib/engine/weights.py`` only lists folders holding both config and weights)."""

from __future__ import annotations

import json
import os
import shutil
import time

import torch

from lib.engine.weights import list_versions


def next_name(root: str) -> str:
    taken = [v["name"] for v in list_versions(root)] + [n for n in (os.listdir(root) if os.path.isdir(root) else [])]
    numbers = [int(n[1:]) for n in taken if n.startswith("v") and n[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1:04d}"


def _json(path: str, data) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def write_version(root: str, state: dict, config: dict, params: dict, labels: dict, metrics: dict,
                  history: list[dict], curve_csv: str | None = None) -> str:
    os.makedirs(root, exist_ok=True)
    name = next_name(root)
    tmp = os.path.join(root, f".{name}.partial")
    os.makedirs(tmp, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in state.items()}, os.path.join(tmp, "weights.pt"))
    _json(os.path.join(tmp, "params.json"), params)
    _json(os.path.join(tmp, "labels.json"), labels)
    _json(os.path.join(tmp, "metrics.json"), metrics)
    plot_curve(history, metrics, os.path.join(tmp, "curve.png"))
    if curve_csv:  # Lightning's CSVLogger: train_loss, train_dice per step, val_dice per validation
        shutil.copyfile(curve_csv, os.path.join(tmp, "curve.csv"))
    _json(os.path.join(tmp, "config.json"), {**config, "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
    os.rename(tmp, os.path.join(root, name))
    return name


def plot_curve(history: list[dict], metrics: dict, path: str) -> None:
    """Training loss and per-frame Dice by step, and the validation Dice (mask protocol) at each check."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history if "loss" in h]
    fig, (ax_loss, ax_dice) = plt.subplots(1, 2, figsize=(10, 3.8))
    if steps:
        loss = [h["loss"] for h in history if "loss" in h]
        dice = [h["dice"] for h in history if "loss" in h]
        ax_loss.plot(steps, loss, lw=0.6, alpha=0.5, label="per step")
        ax_loss.plot(steps, _smooth(loss), lw=1.5, label="moving mean (20)")
        ax_dice.plot(steps, _smooth(dice), lw=1.2, label="train frames (moving mean)")
    before = (metrics.get("validation") or {}).get("dice_before")
    val = ([(0, before)] if before is not None else []) + [
        (h["step"], h["val_dice"]) for h in history if h.get("val_dice") is not None]
    if val:
        ax_dice.plot([s for s, _ in val], [d for _, d in val], "o-", color="C3", label="validation, mask protocol")
    ax_loss.set(xlabel="step", ylabel="loss (SAM 2 recipe)", title="training loss")
    ax_dice.set(xlabel="step", ylabel="Dice", ylim=(0, 1), title="Dice")
    ax_loss.legend(fontsize=8)
    ax_dice.legend(fontsize=8)
    v = metrics.get("validation") or {}
    fig.suptitle(f"val Dice before {v.get('dice_before')} -> after {v.get('dice_after')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _smooth(values: list[float], n: int = 20) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        acc = acc[-n:]
        out.append(sum(acc) / len(acc))
    return out
