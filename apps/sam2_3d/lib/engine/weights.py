"""Fine-tuned model versions: where they live, which one a server uses, and swapping them in live.

A training run writes ``<model_dir>/finetuned/<version>/`` (``config.json``, ``weights.pt`` holding the
tensors that differ from the base checkpoint, metrics, ...; see ``lib/training/versions.py``). The base
checkpoint file is never modified: a version is applied on top of the base weights held in memory.

Which version a server uses: ``--conf finetuned <version>`` pins one, ``--conf finetuned none`` pins the
base model, and by default the newest version trained on the same base checkpoint is used, looked up on
every request, so a finished training run is picked up without a restart. When the weights change, every
session (their SAM 2 state holds memories computed with the old weights) and every cached image feature
is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import weakref

import torch

from .errors import UnknownOption

logger = logging.getLogger(__name__)

BASE = "base"
VERSION_FILES = ("config.json", "weights.pt")

_MANAGERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def versions_root(model_dir: str) -> str:
    return os.path.join(model_dir, "finetuned")


def base_identity(engine) -> dict:
    """What a version must have been trained from to apply to this engine."""
    return {"checkpoint": engine.checkpoint_name, "random_weights": bool(engine.random_weights)}


def list_versions(root: str) -> list[dict]:
    """Complete versions under ``root``, oldest first (names sort by creation: v0001, v0002, ...)."""
    out = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith((".", "_")) or not all(os.path.isfile(os.path.join(path, f)) for f in VERSION_FILES):
            continue
        try:
            with open(os.path.join(path, "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError) as e:
            logger.warning(f"fine-tuned version {name}: unreadable config.json ({e}); skipped")
            continue
        out.append({"name": name, "path": path, **config})
    return out


def summary(version: dict) -> dict:
    """The part of a version ``/info/`` shows."""
    val = version.get("validation") or {}
    return {
        "name": version["name"],
        "created": version.get("created"),
        "base": version.get("base"),
        "parent": version.get("parent"),
        "trained": version.get("trained_parts"),
        "steps": version.get("steps"),
        "val_dice_before": val.get("dice_before"),
        "val_dice_after": val.get("dice_after"),
        "val_images": val.get("images"),
    }


class WeightsManager:
    """Keeps one engine's network on the wanted version; the base values of changed tensors stay in memory."""

    def __init__(self, engine, root: str, pin: str | None = None):
        self.engine = engine
        self.root = root
        self.pin = (pin or "").strip() or None
        self.current = BASE
        self.current_version: dict | None = None
        self._base: dict[str, torch.Tensor] = {}  # base values of every tensor a version has replaced

    def compatible(self) -> list[dict]:
        ident = base_identity(self.engine)
        return [v for v in list_versions(self.root) if v.get("base") == ident]

    def wanted(self) -> dict | None:
        if self.pin and self.pin.lower() == "none":
            return None
        versions = self.compatible()
        if self.pin:
            for v in versions:
                if v["name"] == self.pin:
                    return v
            names = [v["name"] for v in versions] or ["(none)"]
            raise UnknownOption(
                f"fine-tuned version {self.pin!r} (--conf finetuned) not found in {self.root} for base "
                f"{base_identity(self.engine)}; available: {', '.join(names)}, or 'none' for the base model"
            )
        return versions[-1] if versions else None

    def ensure(self) -> str:
        """Load the wanted weights if they are not the ones in use; returns the name in use."""
        version = self.wanted()
        name = version["name"] if version else BASE
        if name == self.current:
            return name
        with self.engine.lock:
            if name != self.current:
                self._load(version)
        return name

    def _load(self, version: dict | None) -> None:
        model = self.engine.predictor
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        new = {}
        if version is not None:
            new = torch.load(os.path.join(version["path"], "weights.pt"), map_location="cpu", weights_only=True)
            unknown = sorted(set(new) - set(params))
            if unknown:
                raise UnknownOption(f"fine-tuned version {version['name']} has tensors this model lacks: {unknown[:5]}")
        with torch.no_grad():
            for key in list(self._base):  # back to base first: versions may change different tensors
                if key not in new:
                    params[key].copy_(self._base[key].to(params[key].device))
            for key, value in new.items():
                if key not in self._base:
                    self._base[key] = params[key].detach().to("cpu", copy=True)
                params[key].copy_(value.to(params[key].device, params[key].dtype))
        dropped = self.engine.drop_states()  # sessions go on: their SAM 2 states are rebuilt from their prompts
        self.engine.feature_cache.clear()
        old, self.current = self.current, version["name"] if version else BASE
        self.current_version = version
        logger.info(f"SAM 2 weights: {old} -> {self.current} ({len(new)} tensors; the SAM 2 states of {dropped} sessions and the feature cache dropped)")


def attach(engine, model_dir: str, pin: str | None = None) -> WeightsManager:
    """Give an engine its version manager and load the wanted weights now."""
    manager = WeightsManager(engine, versions_root(model_dir), pin)
    _MANAGERS[engine] = manager
    manager.ensure()
    return manager


def manager_of(engine) -> WeightsManager | None:
    return _MANAGERS.get(engine)


def ensure_weights(engine) -> str:
    """What every infer request calls first: the wanted weights loaded, their name returned."""
    manager = _MANAGERS.get(engine)
    return manager.ensure() if manager else BASE


def weights_in_use(engine) -> str:
    """``base`` or ``finetuned/<version>``: what result JSON and logs name."""
    manager = _MANAGERS.get(engine)
    name = manager.current if manager else BASE
    return BASE if name == BASE else f"finetuned/{name}"
