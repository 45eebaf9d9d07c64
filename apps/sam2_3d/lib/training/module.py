"""The Lightning module: one clip per step through SAM 2's video forward, SAM 2's loss, AdamW.

The network trained is the engine's own predictor, so validation (Lightning's validation loop, one
held-out image per batch) runs the very code the infer tasks run (engine sessions), on the weights being
trained. Train/eval state during ``fit`` is SAM 2's: the parts trained are in train mode (dropout in the
memory attention on, the mask decoder's training branch, memory encoding from sigmoid masks), a frozen
image encoder is in eval mode, as SAM 2's trainer leaves a frozen trunk. Lightning checkpoints hold the
trained parameters only (and the optimiser's state), never the frozen encoder.
"""

from __future__ import annotations

import lightning as L
import torch

from lib.engine.model import FeatureCache, lazy_constants_as

from . import forward as FW
from .data import ClipSampler, resize_masks
from .distributed import gather_lists
from .losses import frame_loss
from .params import TrainParams
from .validation import validate

# Which module names each trainable part holds (SAM2Base attributes). The image encoder part also holds
# the mask decoder's two high-res projections, because forward_image applies them: frozen together, the
# features stay exactly what the engine caches.
PARTS = {
    "image_encoder": ("image_encoder.", "sam_mask_decoder.conv_s0.", "sam_mask_decoder.conv_s1."),
    "prompt_encoder": ("sam_prompt_encoder.",),
    "mask_decoder": ("sam_mask_decoder.", "obj_ptr_proj.", "no_obj_ptr", "no_obj_embed_spatial"),
    "memory": ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc",
               "obj_ptr_tpos_proj.", "mask_downsample."),
}


def trainable_names(model, parts: list[str], train_image_encoder: bool) -> list[str]:
    prefixes = [p for part in parts for p in PARTS[part]] + (list(PARTS["image_encoder"]) if train_image_encoder else [])
    frozen = () if train_image_encoder else PARTS["image_encoder"]
    return [n for n, _ in model.named_parameters() if n.startswith(tuple(prefixes)) and not n.startswith(frozen)]


class Sam2Finetune(L.LightningModule):
    def __init__(self, engine, sampler: ClipSampler, params: TrainParams, val_pairs: list[dict],
                 on_step=None, on_validation=None):
        super().__init__()
        self.model = engine.predictor
        self.engine = engine
        self.sampler = sampler
        self.params = params
        self.val_pairs = val_pairs
        self.on_step = on_step
        self.on_validation = on_validation
        self.trainable = trainable_names(self.model, params.parts(), params.train_image_encoder)
        names = set(self.trainable)
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in names)
        # Frozen encoder: its features never change, so each training slice is encoded once.
        self.features = None if params.train_image_encoder else FeatureCache(2 << 30)
        self.strict_loading = False  # checkpoints hold the trained parameters only
        self._val_objects: list[dict] = []
        self.last_validation: dict | None = None

    # -- train/eval state --------------------------------------------------------------------------
    def set_train_modes(self) -> None:
        """Train mode for what is trained; the frozen image encoder stays in eval (no drop-path noise on
        features that are cached once and must equal the ones the engine serves)."""
        self.train()
        if not self.params.train_image_encoder:
            self.model.image_encoder.eval()

    def on_train_start(self):
        self.set_train_modes()

    def on_train_epoch_start(self):
        self.set_train_modes()  # validation (eval) ran in between

    # -- checkpoints: the trained parameters only ------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        keep = {f"model.{n}" for n in self.trainable}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}

    def trained_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.model.named_parameters())
        return {n: params[n].detach().to("cpu", copy=True) for n in self.trainable}

    def load_trained_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for n, v in state.items():
                params[n].copy_(v.to(params[n].device, params[n].dtype))

    # -- data ------------------------------------------------------------------------------------
    def _backbone(self, clip) -> dict:
        size = self.model.image_size
        if self.features is None:
            return FW.encode_frames(self.model, self.sampler.frames(clip, size).to(self.device), True)
        missing = [k for k in clip.slices if self.features.get((clip.volume, k)) is None]
        if missing:
            frames = torch.stack([self.sampler.frames(clip, size)[clip.slices.index(k)] for k in missing])
            out = FW.encode_frames(self.model, frames.to(self.device), False)
            if self.features.pos_enc is None:
                self.features.pos_enc = [p[:1] for p in out["vision_pos_enc"]]
            for n, k in enumerate(missing):
                self.features.put((clip.volume, k), [f[n : n + 1] for f in out["backbone_fpn"]])
        fpn = [self.features.get((clip.volume, k)) for k in clip.slices]
        return {
            "backbone_fpn": [torch.cat([f[level] for f in fpn]) for level in range(len(fpn[0]))],
            "vision_pos_enc": [p.expand(len(clip.slices), -1, -1, -1) for p in self.features.pos_enc],
        }

    # -- steps -----------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        clip = batch  # a Clip from data.ClipDataset; its index is the global step (resume-safe)
        height, width = clip.gt.shape[1:]
        size = self.model.image_size
        backbone = self._backbone(clip)
        points, masks = FW.prompt_inputs(clip.prompt, height, width, size, self.device)
        gt = resize_masks(clip.gt, size).to(self.device)
        outputs = FW.video_forward(self.model, backbone, points, masks, gt_first=gt[0],
                                   corrections=self.params.correction_clicks, p_from_gt=0.1,
                                   generator=self.sampler.generator(clip.index, "corrections"))
        terms = [frame_loss(o, gt[t]) for t, o in enumerate(outputs) if not o["is_prompt_mask"]]
        # SAM 2's multi-step loss: a corrected frame's earlier steps are supervised too (summed, as its
        # MultiStepMultiMasksAndIous sums over steps)
        step_totals = [sum((frame_loss(s, gt[t])["total"] for s in o["steps"]), torch.zeros((), device=self.device))
                       for t, o in enumerate(outputs) if not o["is_prompt_mask"]]
        loss = torch.stack([t["total"] + extra for t, extra in zip(terms, step_totals)]).mean()
        dice = float(torch.stack([t["frame_dice"] for t in terms]).mean())
        if self._trainer is not None:  # also usable outside a Trainer (tests, benchmarks/bench_finetune.py)
            self.log("train_loss", loss.detach(), prog_bar=False, batch_size=1)
            self.log("train_dice", dice, prog_bar=False, batch_size=1)
        if self.on_step:
            self.on_step(int(self.global_step) + 1, int(self.current_epoch), float(loss.detach()), dice, clip)
        return loss

    def on_validation_epoch_start(self):
        self._val_objects = []
        self.engine.close()  # sessions hold memories computed with earlier weights
        if self.params.train_image_encoder:
            self.engine.feature_cache.clear()

    def validation_step(self, batch, batch_idx):
        """One held-out image (``data.ValidationImages``): the mask protocol through the engine."""
        if batch is None:  # DDP: this rank has no held-out image of its own
            return
        try:
            result = validate(self.engine, [batch], self.params.objects, self.params.preset,
                              self.params.val_z_margin, self.params.seed)
        finally:
            self.engine.close()
        self._val_objects.extend(result["objects"])

    def on_validation_epoch_end(self):
        objects = gather_lists(self._val_objects)  # under DDP each rank validated its share of the images
        dices = [o["dice"] for o in objects]
        result = {"dice": round(float(sum(dices) / len(dices)), 6) if dices else None, "objects": objects,
                  "protocol": "mask", "metric": "volume Dice (MONAI compute_dice)"}
        self.last_validation = result
        lazy_constants_as(self.model, inference=False)  # autograd refuses inference tensors
        if self.trainer.sanity_checking:
            return
        if result["dice"] is not None:
            self.log("val_dice", result["dice"], batch_size=1)
        if self.on_validation and self.trainer.state.fn == "fit":
            self.on_validation(int(self.global_step), int(self.current_epoch), result)

    def configure_optimizers(self):
        params = [p for n, p in self.model.named_parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.params.learning_rate, weight_decay=self.params.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.params.total_steps),
                                                           eta_min=self.params.learning_rate * 0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
