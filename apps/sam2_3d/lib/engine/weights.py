"""Fine-tuned model versions: where they live, which one a server uses, and swapping them in live.

A training run writes ``<model_dir>/finetuned/<version>/`` (``config.json``, ``weights.pt`` holding the
tensors that differ from the base checkpoint, metrics, ...; see ``lib/training/versions.py``). The base
checkpoint file is never modified: a version is applied on top of the base weights held in memory.

Which version a server uses: ``--conf finetuned <version>`` pins one, ``--conf finetuned none`` pins the
base model, and by default the newest version trained on the same base checkpoint is used, looked up on
every request, so a finished training run is picked up without a restart. When the weights change, every
session (their SAM 2 state holds memories computed with the old weights) and every cached image feature
is dropped.

A version whose files do not load (truncated, other shapes) is skipped with one logged error, listed as
broken (``/info/``), and the next older one is used: serving never fails on a training artefact. The
version chosen over HTTP (``PUT /train/sam2_finetune/versions/in_use``) is kept in ``finetuned/_in_use.json``
so a restart keeps it; ``--conf finetuned`` overrides it.
"""

from __future__ import annotations

import json
import logging
import os

import torch

from ..common import atomic_write_json
from .errors import UnknownOption

logger = logging.getLogger(__name__)

BASE = "base"
NEWEST = "newest"
VERSION_FILES = ("config.json", "weights.pt")
IN_USE_FILE = "_in_use.json"



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


class BrokenVersion(UnknownOption):
    """A pinned version whose files do not load."""

    status_code = 409


def read_in_use(root: str) -> str | None:
    try:
        with open(os.path.join(root, IN_USE_FILE)) as f:
            return json.load(f).get("version")
    except (OSError, ValueError, AttributeError):
        return None


def write_in_use(root: str, version: str | None) -> None:
    os.makedirs(root, exist_ok=True)
    atomic_write_json(os.path.join(root, IN_USE_FILE), {"version": version}, indent=None)


class WeightsManager:
    """Keeps one engine's network on the wanted version; the base values of changed tensors stay in memory."""

    def __init__(self, engine, root: str, pin: str | None = None):
        self.engine = engine
        self.root = root
        self.conf_pin = (pin or "").strip() or None
        self.pin = self.conf_pin or read_in_use(root)
        self.current = BASE
        self._base: dict[str, torch.Tensor] = {}  # base values of every tensor a version has replaced
        self.broken: dict[str, dict] = {}  # name -> {"error", "mtime"}: versions that failed to load

    def _is_broken(self, version: dict) -> bool:
        known = self.broken.get(version["name"])
        return bool(known) and known["mtime"] == _mtime(version)

    def broken_list(self) -> list[dict]:
        return [{"name": n, "error": b["error"]} for n, b in sorted(self.broken.items())]

    def compatible(self) -> list[dict]:
        ident = base_identity(self.engine)
        return [v for v in list_versions(self.root) if v.get("base") == ident]

    def set_pin(self, name: str) -> str:
        """Roll back or forward: ``base``, ``newest`` (follow new versions) or a version name; kept on disk."""
        name = (name or "").strip()
        pin = {BASE: "none", "none": "none", NEWEST: None}.get(name.lower(), name)
        if pin not in (None, "none"):
            found = [v for v in self.compatible() if v["name"] == pin]
            if not found:
                raise UnknownOption(f"unknown version {name!r}; versions for this base: "
                                    f"{', '.join(v['name'] for v in self.compatible()) or '(none)'}; or base, newest")
            if self._is_broken(found[0]) or not self._loadable(found[0]):
                raise BrokenVersion(f"version {pin} does not load: {self.broken[pin]['error']}")
        old = self.pin
        self.pin = pin
        try:
            self.ensure()
        except Exception:
            self.pin = old
            raise
        write_in_use(self.root, pin)
        return self.current

    def wanted(self) -> dict | None:
        if self.pin and self.pin.lower() == "none":
            return None
        versions = [v for v in self.compatible() if not self._is_broken(v)]
        if self.pin:
            for v in versions:
                if v["name"] == self.pin:
                    return v
            if self.pin in self.broken:
                raise BrokenVersion(f"fine-tuned version {self.pin!r} (pinned) does not load: "
                                    f"{self.broken[self.pin]['error']}")
            names = [v["name"] for v in versions] or ["(none)"]
            raise UnknownOption(
                f"fine-tuned version {self.pin!r} (--conf finetuned) not found in {self.root} for base "
                f"{base_identity(self.engine)}; available: {', '.join(names)}, or 'none' for the base model"
            )
        return versions[-1] if versions else None

    def ensure(self) -> str:
        """Load the wanted weights if they are not the ones in use; returns the name in use. A version
        that fails to load is marked broken (one logged error) and the next wanted one is tried."""
        while True:
            version = self.wanted()
            name = version["name"] if version else BASE
            if name == self.current:
                return name
            with self.engine.lock:
                if name == self.current:
                    return name
                try:
                    self._load(version)
                    return name
                except _LoadFailed as e:
                    if self.pin and self.pin == name:
                        raise BrokenVersion(str(e)) from e
                    # loop: wanted() now skips it

    def _loadable(self, version: dict) -> bool:
        try:
            self._read(version)
            return True
        except _LoadFailed:
            return False

    def _read(self, version: dict) -> dict:
        """The version's tensors, checked against the model before anything is changed."""
        model = self.engine.predictor
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        try:
            new = torch.load(os.path.join(version["path"], "weights.pt"), map_location="cpu", weights_only=True)
            if not isinstance(new, dict):
                raise ValueError(f"weights.pt holds a {type(new).__name__}, not a dict of tensors")
            unknown = sorted(set(new) - set(params))
            if unknown:
                raise ValueError(f"tensors this model lacks: {unknown[:5]}")
            shapes = [k for k, v in new.items() if tuple(v.shape) != tuple(params[k].shape)]
            if shapes:
                raise ValueError(f"tensors of other shapes: {shapes[:5]}")
            return new
        except Exception as e:  # noqa: BLE001 - truncated/corrupt files raise many kinds
            error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            if not self._is_broken(version):
                logger.error(f"fine-tuned version {version['name']} ({version['path']}) does not load, skipped: {error}")
            self.broken[version["name"]] = {"error": error, "mtime": _mtime(version)}
            raise _LoadFailed(f"fine-tuned version {version['name']} does not load: {error}") from e

    def replaced_tensors(self) -> set[str]:
        """The names of the tensors any loaded version has changed from the checkpoint's (a new version built
        on the current one must carry them too)."""
        return set(self._base)

    def _load(self, version: dict | None) -> None:
        model = self.engine.predictor
        params = dict(model.named_parameters())
        params.update(dict(model.named_buffers()))
        new = self._read(version) if version is not None else {}
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
        logger.info(f"SAM 2 weights: {old} -> {self.current} ({len(new)} tensors; the SAM 2 states of {dropped} sessions and the feature cache dropped)")


class _LoadFailed(Exception):
    pass


def _mtime(version: dict) -> float:
    try:
        return os.path.getmtime(os.path.join(version["path"], "weights.pt"))
    except OSError:
        return -1.0


def attach(engine, model_dir: str, pin: str | None = None) -> WeightsManager:
    """Give an engine its version manager and load the wanted weights now."""
    manager = WeightsManager(engine, versions_root(model_dir), pin)
    engine.weights_manager = manager
    try:
        manager.ensure()
    except UnknownOption as e:
        if manager.conf_pin:
            raise  # --conf finetuned names it: the operator is told at start-up
        logger.error(f"the version chosen over HTTP ({manager.pin}) cannot be used ({e}); following the newest")
        manager.pin = None
        manager.ensure()
    return manager


def standalone_state_dict(manager: WeightsManager, name: str) -> dict[str, torch.Tensor]:
    """The full SAM 2 state dict of ``base`` or a version: what ``build_sam2_video_predictor`` loads from
    ``{"model": state_dict}``. Called on the torch thread (it reads the live network)."""
    with manager.engine.lock:
        full = {k: v.detach().to("cpu", copy=True) for k, v in manager.engine.predictor.state_dict().items()}
    for key, value in manager._base.items():  # whatever version is loaded now: back to the base values
        full[key] = value.clone()
    if name not in (BASE, "none"):
        version = next((v for v in manager.compatible() if v["name"] == name), None)
        if version is None:
            raise UnknownOption(f"unknown version {name!r}; versions for this base: "
                                f"{', '.join(v['name'] for v in manager.compatible()) or '(none)'}")
        try:
            new = manager._read(version)
        except _LoadFailed as e:
            raise BrokenVersion(str(e)) from e
        for key, value in new.items():
            full[key] = value.to(full[key].dtype)
    return full


def manager_of(engine) -> WeightsManager | None:
    """The engine's version manager (None: the engine serves its checkpoint's weights only)."""
    return getattr(engine, "weights_manager", None)


def detach(engine) -> None:
    """The engine no longer follows fine-tuned versions (its weights stay as they are)."""
    engine.weights_manager = None


def ensure_weights(engine) -> str:
    """What every infer request calls first: the wanted weights loaded, their name returned."""
    manager = manager_of(engine)
    return manager.ensure() if manager else BASE


def weights_in_use(engine) -> str:
    """``base`` or ``finetuned/<version>``: what result JSON and logs name."""
    manager = manager_of(engine)
    name = manager.current if manager else BASE
    return BASE if name == BASE else f"finetuned/{name}"


def weights_served_next(engine) -> str:
    """What the next request will run on (``/info/``): the wanted version, even before a request loads it;
    ``base`` names the checkpoint's own weights."""
    manager = manager_of(engine)
    if manager is None:
        return BASE
    try:
        version = manager.wanted()
    except UnknownOption:  # a pinned version that is gone: requests answer 400 naming it
        return weights_in_use(engine)
    return f"finetuned/{version['name']}" if version else BASE
