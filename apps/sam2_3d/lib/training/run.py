"""One fine-tuning run, end to end: data, resume point, Lightning, validation before/after, the version.

Runs live in ``<model_dir>/finetuned/_runs/<key>/``; the key hashes everything that defines the run
(parameters, labels used, base weights), so posting the same training again after a stop or a crash
resumes it from its last Lightning checkpoint, at the step it reached, drawing the same clips.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger

from lib.common import atomic_write_json as _write_json
from lib.engine import intensity
from lib.engine.model import lazy_constants_as
from lib.engine.weights import base_identity, ensure_weights, manager_of, versions_root, weights_in_use

from . import data as D
from .datamodule import ClipData
from .distributed import launched_rank, parameters_digest, trainer_options
from .module import Sam2Finetune
from .params import TrainParams, check_for_server
from .versions import write_version

logger = logging.getLogger(__name__)


def say(line: str) -> None:
    """Progress lines: monailabel keeps the train process's last stdout lines for GET /train/."""
    print(f"[sam2_finetune] {line}", file=sys.stdout, flush=True)


def progress_path(model_dir: str) -> str:
    return os.path.join(versions_root(model_dir), "_runs", "progress.json")


def read_progress(model_dir: str) -> dict:
    try:
        with open(progress_path(model_dir)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


class Progress(L.Callback):
    """Stdout lines, ``progress.json`` (for ``/info/`` train_stats) and the run's history file."""

    def __init__(self, run_dir: str, model_dir: str, params: TrainParams, base: dict, writes: bool = True):
        self.writes = writes  # DDP: rank 0 only; the other ranks train and stay silent
        self.history_path = os.path.join(run_dir, "history.jsonl")
        self.model_dir = model_dir
        self.params = params
        self.state = {**base, "status": "RUNNING", "total_epochs": params.epochs, "total_steps": params.total_steps,
                      "start_ts": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.t0 = time.time()
        self.first_step = None
        self.on_resume = None
        self.publish(step=0)  # replaces the previous run's (finished) stats at once

    def history(self) -> list[dict]:
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def _append(self, entry: dict) -> None:
        if not self.writes:
            return
        with open(self.history_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def publish(self, **kw) -> None:
        self.state.update(kw)
        if self.writes:
            _write_json(progress_path(self.model_dir), self.state)

    def on_train_start(self, trainer, pl_module):
        step = int(trainer.global_step)
        self.first_step = step
        self.t0 = time.time()
        if trainer.world_size > 1:
            strategy = trainer.strategy
            say(f"rank {trainer.global_rank} of {trainer.world_size} ({type(strategy).__name__}, "
                f"{getattr(strategy, 'process_group_backend', None)}) training from step {step}")
        if not self.writes:
            return
        kept = [h for h in self.history() if h["step"] <= step]  # steps after the checkpoint are redone
        with open(self.history_path, "w") as f:
            f.writelines(json.dumps(h) + "\n" for h in kept)
        if self.on_resume:
            self.on_resume(step)
        if step:
            say(f"resumed from the checkpoint at step {step} of {self.params.total_steps}")
        self.publish(step=step, resumed_from_step=step or None)

    def on_step(self, step: int, epoch: int, loss: float, dice: float, clip) -> None:
        if not self.writes:
            return
        self._append({"step": step, "epoch": epoch + 1, "loss": round(loss, 5), "dice": round(dice, 5)})
        rate = (step - (self.first_step or 0)) / max(1e-9, time.time() - self.t0)
        say(f"epoch {epoch + 1}/{self.params.epochs} step {step}/{self.params.total_steps} loss {loss:.4f} "
            f"frame dice {dice:.3f} ({clip.prompt['kind']} prompt, {rate:.2f} steps/s)")
        self.publish(epoch=epoch + 1, step=step, loss=round(loss, 5), steps_per_s=round(rate, 3))

    def on_validation(self, step: int, epoch: int, result: dict) -> None:
        if not self.writes:
            return
        self._append({"step": step, "epoch": epoch + 1, "val_dice": result["dice"], "val": result["objects"]})
        say(f"validation after epoch {epoch + 1} (step {step}): mask-protocol volume Dice {result['dice']}")
        best = max([h["val_dice"] for h in self.history() if h.get("val_dice") is not None] or [0.0])
        self.publish(val_dice=result["dice"], best_metric=best)


def _run_key(params: TrainParams, labels: list[dict], base: dict, parent: str) -> str:
    ident = {k: v for k, v in params.to_dict().items() if k != "resume"}
    blob = json.dumps({"params": ident, "labels": labels, "base": base, "parent": parent}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def publish_end(model_dir: str, status: str, reason: str, **kw) -> None:
    """Every run ends in ``train_stats`` as DONE, STOPPED or FAILED, with the reason."""
    state = read_progress(model_dir)
    state.update(kw, status=status, reason=reason, end_ts=time.strftime("%Y-%m-%d %H:%M:%S"))
    os.makedirs(os.path.dirname(progress_path(model_dir)), exist_ok=True)
    _write_json(progress_path(model_dir), state)


def _readable_checkpoint(last: str) -> str | None:
    """None if Lightning's resume checkpoint loads; else the error (the file is then moved aside)."""
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=False)
        if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
            return "not a Lightning checkpoint (no state_dict / global_step)"
        return None
    except Exception as e:  # noqa: BLE001 - truncated, overwritten, wrong format: all mean "start fresh"
        return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


class BestByValidation:
    """The trained parameters at the best validation Dice so far (ties: the later), kept in ``best.pt``."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, "best.pt")
        self.meta_path = os.path.join(run_dir, "best.json")
        self.meta = json.load(open(self.meta_path)) if os.path.exists(self.meta_path) else None

    def forget_after(self, step: int) -> None:
        if self.meta and self.meta["step"] > step:  # steps after the resume checkpoint are redone
            self.meta = None
            for f in (self.path, self.meta_path):
                if os.path.exists(f):
                    os.remove(f)

    def offer(self, step: int, dice: float | None, module: Sam2Finetune) -> bool:
        if dice is None or (self.meta and dice < self.meta["dice"]):
            return False
        torch.save(module.trained_state(), self.path + ".tmp")
        os.replace(self.path + ".tmp", self.path)
        self.meta = {"step": step, "dice": dice}
        _write_json(self.meta_path, self.meta)
        return True

    def state(self) -> dict:
        return torch.load(self.path, map_location="cpu", weights_only=True)


def train(engine, datastore, params: TrainParams, model_dir: str, pairs: list[dict] | None = None,
          callbacks: list | None = None) -> dict:
    """Fine-tune ``engine.predictor`` on the datastore's final labels; keep the best version by validation.

    Any error ends the run as FAILED in ``train_stats`` with the reason (and is raised again)."""
    try:
        return _train(engine, datastore, params, model_dir, pairs, callbacks or [])
    except Exception as e:
        publish_end(model_dir, "FAILED", f"{type(e).__name__}: {e}", pid=os.getpid())
        say(f"FAILED: {type(e).__name__}: {e}")
        raise


def _train(engine, datastore, params: TrainParams, model_dir: str, pairs: list[dict] | None, callbacks: list) -> dict:
    t_start = time.time()
    ensure_weights(engine)  # start from the weights the server uses now
    parent_name = weights_in_use(engine)
    check_for_server(params, engine.image_size, str(engine.device))
    rank = launched_rank()  # > 0: a DDP rank Lightning started; it trains and writes nothing
    data = _training_data(datastore, params, pairs)
    base = base_identity(engine)
    root = versions_root(model_dir)
    run_dir = os.path.join(root, "_runs", _run_key(params, data.labels, base, parent_name))
    if rank == 0:
        last, resume_note = _prepare_run_dir(run_dir, params.resume)
    else:  # rank 0 prepared the folder and waits for this rank in fit
        last, resume_note = _last_checkpoint(run_dir), None

    say(f"{len(data.train_pairs)} training and {len(data.val_pairs)} validation images; starting from {parent_name} "
        f"({engine.checkpoint_name}{', RANDOM WEIGHTS' if engine.random_weights else ''}) at {engine.image_size} px")
    volumes = [data.volume_of[p["image_id"]] for p in data.train_pairs]
    sampler = D.ClipSampler(volumes, params.clip_length, params.prompt_kinds(), params.seed)
    progress = Progress(run_dir, model_dir, params, {
        "run": os.path.basename(run_dir), "parent": parent_name, "pid": os.getpid(), "resume_note": resume_note,
        "skipped_labels": data.skipped, "reason": None, "version": None}, writes=rank == 0)
    best = BestByValidation(run_dir)
    torch.manual_seed(params.seed)
    module = Sam2Finetune(engine, sampler, params, data.val_pairs, on_step=progress.on_step)
    start_state = module.trained_state()

    def on_validation(step, epoch, result):
        progress.on_validation(step, epoch, result)
        if rank == 0 and best.offer(step, result["dice"], module):
            say(f"best so far: validation Dice {result['dice']} at step {step}")

    module.on_validation = on_validation
    datamodule = ClipData(sampler, data.val_pairs, params.steps_per_epoch, params.total_steps)
    say(f"training {len(module.trainable)} tensors ({', '.join(params.parts())}"
        f"{', image encoder' if params.train_image_encoder else '; image encoder frozen'})")

    gpu = str(engine.device).startswith("cuda")
    common = dict(accelerator="gpu" if gpu else "cpu", devices=1, precision="bf16-mixed" if gpu else "32-true",
                  enable_progress_bar=False, enable_model_summary=False, default_root_dir=run_dir)
    before = _validate_before(run_dir, module, datamodule, bool(data.val_pairs), common) if rank == 0 else None
    trainer = _fit(module, datamodule, params, run_dir, last, progress, best, bool(data.val_pairs),
                   [*callbacks], {**common, **trainer_options(params, gpu)})
    if not trainer.is_global_zero:
        return {"rank": trainer.global_rank, "steps": int(trainer.global_step)}
    run = FinishedRun(engine=engine, module=module, params=params, data=data, base=base, parent_name=parent_name,
                      root=root, run_dir=run_dir, progress=progress, steps=int(trainer.global_step),
                      seconds=time.time() - t_start, resume_note=resume_note, precision=common["precision"])
    kept_state, kept, after = _kept_result(best, run.progress.history(), module, run.steps)
    dice_before = before["dice"] if before else None
    if params.keep_only_if_better and not (dice_before is None or (kept["dice"] is not None
                                                                     and kept["dice"] > dice_before)):
        module.load_trained_state(start_state)  # the engine keeps the weights it started from
        lazy_constants_as(module.model, inference=True)
        return _discard(run, kept, dice_before)
    module.load_trained_state(kept_state)
    lazy_constants_as(module.model, inference=True)  # as serving (and a compiled server's graphs) had them
    return _keep(run, kept, before, after)


@dataclass
class FinishedRun:
    """What a run's ending needs to know: written once after Lightning's fit."""

    engine: object
    module: Sam2Finetune
    params: TrainParams
    data: TrainingData
    base: dict
    parent_name: str
    root: str
    run_dir: str
    progress: Progress
    steps: int
    seconds: float
    resume_note: str | None
    precision: str

    @property
    def csv_path(self) -> str:
        return os.path.join(self.run_dir, "csv", "metrics.csv")

    def mark_finished(self, record: dict) -> None:
        _write_json(os.path.join(self.run_dir, "finished.json"), record)
        shutil.rmtree(os.path.dirname(_last_checkpoint(self.run_dir)), ignore_errors=True)  # they were for resuming


def _discard(run: FinishedRun, kept: dict, dice_before: float) -> dict:
    """Not better than the start: no version; the parent stays in use."""
    reason = (f"not better than the starting weights: best validation Dice {kept['dice']} (step {kept['step']}) "
              f"<= {dice_before} before training; no version written, {run.parent_name} stays in use")
    run.mark_finished({"version": None, "reason": reason})
    run.progress.publish(status="DONE", reason=reason, version=None, total_time=round(run.seconds, 1), step=run.steps,
                         kept_step=kept["step"], best_metric=kept["dice"], dice_before=dice_before)
    say(reason)
    return {"version": None, "reason": reason, "steps": run.steps, "seconds": round(run.seconds, 1),
            "validation": {"dice_before": dice_before, "dice_best": kept["dice"], "best_step": kept["step"]},
            "curve_csv": run.csv_path}


def _keep(run: FinishedRun, kept: dict, before: dict | None, after: dict | None) -> dict:
    """The new version: the tensors trained now and those the parent had changed from the base."""
    history = run.progress.history()
    validation = {
        "protocol": "mask", "metric": "volume Dice", "images": [p["image_id"] for p in run.data.val_pairs],
        "dice_before": before["dice"] if before else None, "dice_after": after["dice"] if after else None,
        "kept_step": kept["step"], "kept": "best validation Dice (ties: later)" if after else "last (no validation images)",
        "side_by_side": _side_by_side(before, after),
    }
    metrics = {
        "validation": validation, "steps": run.steps, "seconds": round(run.seconds, 1),
        "resumed_from_step": run.progress.first_step or None, "resume_note": run.resume_note,
        "skipped_labels": run.data.skipped,
        "final_train_loss_mean20": _mean_last([h["loss"] for h in history if "loss" in h]),
        "first_train_loss_mean20": _mean_first([h["loss"] for h in history if "loss" in h]),
        "device": str(run.engine.device), "precision": run.precision,
    }
    changed = set(run.module.trainable)
    manager = manager_of(run.engine)
    if manager is not None:
        changed |= manager.replaced_tensors()  # tensors the parent version had changed from the base
    state = {k: v for k, v in run.engine.predictor.state_dict().items() if k in changed}
    params = run.params
    config = {
        "base": run.base, "image_size": run.engine.image_size,
        "parent": run.parent_name, "trained_parts": params.parts() + (["image_encoder"] if params.train_image_encoder else []),
        "trained_tensors": len(state), "steps": run.steps, "kept_step": kept["step"], "validation": validation,
    }
    name = write_version(run.root, state, config, params.to_dict(), {"images": run.data.labels}, metrics, history,
                         curve_csv=run.csv_path if os.path.exists(run.csv_path) else None)
    run.mark_finished({"version": name})
    reason = ("best validation Dice "
              f"{validation['dice_before']} -> {validation['dice_after']} (step {kept['step']})" if after else
              "no validation images: the last step's weights are kept")
    run.progress.publish(status="DONE", reason=reason, version=name, total_time=round(run.seconds, 1), step=run.steps,
                         kept_step=kept["step"])
    say(f"version {name} written: {reason}, in {run.seconds:.0f} s")
    return {"version": name, "path": os.path.join(run.root, name), **metrics}


@dataclass
class TrainingData:
    """The usable final labels, split; ``labels`` (with digests) identify the run."""

    train_pairs: list[dict]
    val_pairs: list[dict]
    volume_of: dict
    labels: list[dict]
    skipped: list[dict]


def _training_data(datastore, params: TrainParams, pairs: list[dict] | None) -> TrainingData:
    pairs = D.datastore_pairs(datastore) if pairs is None else pairs
    if params.max_images:
        pairs = pairs[: params.max_images]
    if not pairs:
        raise ValueError("no image in the datastore has a final label: save labels before training")
    preset = intensity.IntensityPreset(params.preset)
    usable, skipped = D.usable_volumes(pairs, preset, params.objects)
    for s in skipped:
        say(f"skipped the label of {s['image_id']}: {s['reason']}")
    if not usable:
        raise ValueError(f"none of the {len(pairs)} final labels can be used for training: "
                         + "; ".join(f"{s['image_id']}: {s['reason']}" for s in skipped))
    pairs = [p for p, _ in usable]
    volume_of = {p["image_id"]: v for p, v in usable}
    if all(p.get("split") in ("train", "validation") for p in pairs):  # a split given with the pairs
        train_pairs = [p for p in pairs if p["split"] == "train"]
        val_pairs = [p for p in pairs if p["split"] == "validation"]
    else:
        train_pairs, val_pairs = D.split(pairs, params.validation_split, params.seed)
    labels = [{**p, "label_sha256": D.file_digest(p["label"]), "split": "validation" if p in val_pairs else "train"}
              for p in pairs]
    return TrainingData(train_pairs, val_pairs, volume_of, labels, skipped)


def _last_checkpoint(run_dir: str) -> str:
    """Where Lightning keeps the run's resume checkpoint (its folder holds nothing else)."""
    return os.path.join(run_dir, "checkpoints", "last.ckpt")


def _prepare_run_dir(run_dir: str, resume: bool) -> tuple[str, str | None]:
    """The run folder, emptied unless resuming; an unreadable resume checkpoint is moved aside.

    Returns the resume checkpoint's path (it may not exist) and a note for clients when it was unreadable."""
    last = _last_checkpoint(run_dir)
    if not resume or os.path.exists(os.path.join(run_dir, "finished.json")):
        shutil.rmtree(run_dir, ignore_errors=True)
    resume_note = None
    if os.path.exists(last):
        error = _readable_checkpoint(last)
        if error:
            aside = f"{run_dir}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.ckpt"
            os.replace(last, aside)
            shutil.rmtree(run_dir, ignore_errors=True)  # its history and best belong to the lost checkpoint
            # train_stats is an answer to clients: the file's name, not the server's folders
            resume_note = (f"resume checkpoint unreadable ({error}); moved aside as {os.path.basename(aside)}; "
                           "started fresh")
            say(resume_note)
            logger.error(f"sam2_finetune: {resume_note}")
    os.makedirs(run_dir, exist_ok=True)
    return last, resume_note


def _validate_before(run_dir: str, module: Sam2Finetune, datamodule, has_validation: bool, common: dict) -> dict | None:
    """The starting weights' validation (once per run: a resumed run reads it back)."""
    before_path = os.path.join(run_dir, "before.json")
    if has_validation and not os.path.exists(before_path):
        say("validating the starting weights (mask protocol)")
        L.Trainer(logger=False, enable_checkpointing=False, **common).validate(module, datamodule=datamodule,
                                                                               verbose=False)
        _write_json(before_path, module.last_validation)
        say(f"before training: mask-protocol volume Dice {module.last_validation['dice']}")
    return json.load(open(before_path)) if os.path.exists(before_path) else None


def _fit(module: Sam2Finetune, datamodule, params: TrainParams, run_dir: str, last: str, progress: Progress,
         best: BestByValidation, has_validation: bool, callbacks: list, common: dict) -> L.Trainer:
    """Lightning's fit, resumed from ``last`` when it exists; the model is left frozen in eval mode."""
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=os.path.dirname(last), every_n_train_steps=params.checkpoint_every, save_top_k=0, save_last=True,
    )
    trainer = L.Trainer(
        max_epochs=params.epochs, max_steps=params.total_steps, limit_train_batches=params.steps_per_epoch,
        limit_val_batches=1.0 if has_validation else 0, num_sanity_val_steps=0, log_every_n_steps=1,
        use_distributed_sampler=False,  # ClipData deals clips and held-out images to the ranks itself
        gradient_clip_val=params.gradient_clip, gradient_clip_algorithm="norm",
        callbacks=[checkpoint, progress, *callbacks], logger=CSVLogger(run_dir, name="csv", version=""), **common,
    )
    lazy_constants_as(module.model, inference=False)  # served requests left them as inference tensors
    progress.on_resume = best.forget_after
    module.set_train_modes()  # Lightning keeps the modes it finds (it warns about the frozen encoder's eval)
    trainer.fit(module, datamodule=datamodule, ckpt_path=last if os.path.exists(last) else None)
    if trainer.world_size > 1:  # equal on every rank when DDP synced the gradients
        say(f"rank {trainer.global_rank} of {trainer.world_size} finished at step {trainer.global_step}: "
            f"trained parameters sha256 {parameters_digest(module)}")
    module.model.eval()
    for p in module.model.parameters():
        p.requires_grad_(False)
    return trainer


def _kept_result(best: BestByValidation, history: list[dict], module: Sam2Finetune, steps: int):
    """The state to keep, its step and Dice, and its validation (None without validation images)."""
    if best.meta is None:  # no validation images: nothing to choose by, the last state is kept
        return module.trained_state(), {"step": steps, "dice": None}, None
    kept = {"step": best.meta["step"], "dice": best.meta["dice"]}
    entry = next((h for h in reversed(history) if h.get("val_dice") is not None and h["step"] == kept["step"]), None)
    return best.state(), kept, {"dice": kept["dice"], "objects": entry["val"] if entry else [], "step": kept["step"]}


def _side_by_side(before: dict | None, after: dict | None) -> list[dict]:
    if not before or not after:
        return []
    after_by = {(o["image"], o["object"]): o["dice"] for o in after["objects"]}
    return [{"image": o["image"], "object": o["object"], "dice_before": o["dice"],
             "dice_after": after_by.get((o["image"], o["object"]))} for o in before["objects"]]


def _mean_last(values, n=20):
    return round(sum(values[-n:]) / len(values[-n:]), 5) if values else None


def _mean_first(values, n=20):
    return round(sum(values[:n]) / len(values[:n]), 5) if values else None
