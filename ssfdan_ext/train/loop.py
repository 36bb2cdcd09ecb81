"""The SSF-DAN training loop (docs/semantics.md section 5): segmentation, confidence selection, CA-R adversarial
losses."""
from __future__ import annotations

import contextlib
import gc
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import IGNORE, confidence_select, rho_schedule
from ..evaluate import EvalResult, colorize, evaluate, iou_table, write_iou_table
from ..models import build_model, load_pretrained
from . import distributed as D
from .adapt import Discriminators, LossTerm, self_training_term
from .checkpoint import CheckpointManager, rng_state, set_rng_state
from .config import ConfigError, TrainConfig, pretrained_warning, validate
from .data import StreamBatchSampler, build_datasets, loader
from .guards import check_finite_losses, check_finite_tensors, divergence_explained
from .outdir import claim_out_dir, releases_lock_on_error
from .runlog import CsvLog, Progress, TensorBoard


class Poly:
    """Poly learning-rate factor ``(1 - it / total) ** power`` (a class, so the scheduler's state saves).

    Shapes: n/a.
    """

    def __init__(self, total: int, power: float) -> None:
        self.total, self.power = total, power

    def __call__(self, it: int) -> float:
        return max(0.0, 1.0 - it / self.total) ** self.power


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Shapes: history holds one dict per iteration run by this call (the CSV row).
    """

    model: nn.Module
    discriminators: Discriminators
    result: EvalResult | None
    out_dir: Path
    history: list[dict] = field(default_factory=list)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but no CUDA device is available (use device=auto or device=cpu)")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _freeze_bn(model: nn.Module) -> None:
    # Batch statistics depend on how a batch is split over processes; running statistics do not.
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class Trainer:
    """One training run: builds everything from ``cfg``, resumes when asked, runs, validates, checkpoints.

    Shapes: n/a.
    """

    @releases_lock_on_error
    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg = validate(cfg)
        self.device = _device(cfg)
        self._threads = torch.get_num_threads()  # restored by close(): a run inside a process borrows it
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.dist = D.init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # Before anything is read from or written to out_dir: one run per out_dir at a time.
        self._lock = claim_out_dir(cfg.out_dir, self.dist, self.device)
        self._seed(cfg.seed)
        model = build_model(cfg.model, cfg.num_classes, **cfg.model_kwargs)
        if cfg.pretrained:
            load_pretrained(model, cfg.pretrained)
        elif self.dist.is_main and (note := pretrained_warning(cfg)):
            print(note, flush=True)
        self.model = model.to(self.device)
        if cfg.sync_bn and self.dist.enabled and self.device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.discs = Discriminators(cfg, model.feature_channels).to(self.device)
        head = {id(p) for p in model.head_parameters()}
        groups = [{"params": [p for p in model.parameters() if id(p) not in head], "lr": cfg.lr},
                  {"params": model.head_parameters(), "lr": cfg.lr * cfg.head_lr_mult}]
        self.opt_g = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                                     weight_decay=cfg.weight_decay)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, Poly(cfg.iterations, cfg.power))
        self.opt_d = self.sched_d = None
        if self.discs.active:
            # The fused Adam (one kernel over all tensors): at the paper's widths the SS-D has 157.6 M parameters,
            # and the per-tensor loop took ~6x longer on the CPU (about 1.4 s against 0.22 s for 160 M here).
            fused = self.device.type in ("cpu", "cuda")
            self.opt_d = torch.optim.Adam(self.discs.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas_d),
                                          fused=fused or None)
            self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, Poly(cfg.iterations, cfg.power))
        fp16 = cfg.amp == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.model_ddp, self.discs_ddp = self.model, self.discs
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # With frozen BatchNorm the buffers never change, so there is nothing to broadcast; and broadcasting
            # them would overwrite, in place, running statistics that eval-mode BatchNorm saved for the backward
            # of the first of the two segmenter forwards (torch < 2.14 then fails that backward).
            self.model_ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids,
                                                                 broadcast_buffers=not cfg.freeze_bn)
            if self.discs.active:
                self.discs_ddp = nn.parallel.DistributedDataParallel(self.discs, device_ids=ids)
        self.out_dir = Path(cfg.out_dir)
        self.ckpt = CheckpointManager(self.out_dir / "checkpoints", cfg.keep_last)
        self.start, self.best = 0, float("-inf")
        rng = None
        if cfg.resume:
            rng = self._resume()
        elif self.ckpt.checkpoints():
            raise ConfigError(f"out_dir {str(self.out_dir)!r} already holds checkpoints of a run: pass resume=true "
                              f"to continue it, or choose another out_dir")
        self.source, self.target, self.val = build_datasets(cfg, getattr(model, "normalization", "imagenet"))
        samplers = [StreamBatchSampler(len(ds), cfg.batch_size, cfg.seed * 2 + k, self.dist.rank,
                                       self.dist.world_size, self.start) for k, ds in enumerate((self.source,
                                                                                                self.target))]
        self.source_iter = loader(self.source, samplers[0], cfg.num_workers)
        self.target_iter = (loader(self.target, samplers[1], cfg.num_workers)
                            if self.discs.active or cfg.self_training > 0 else None)
        main = self.dist.is_main
        self.csv = CsvLog(self.out_dir / "train.csv", self.start if cfg.resume else None) if main else None
        self.tb = TensorBoard(self.out_dir / "tensorboard", cfg.tensorboard and main,
                              purge_step=self.start if cfg.resume else None)
        if rng is not None:
            # Last: creating the data loaders draws from the global torch RNG.
            set_rng_state(rng)
        self.history: list[dict] = []
        self._tau: Tensor | None = None
        self._kept: Tensor | None = None

    # --- set-up -----------------------------------------------------------------------------------------------
    def _seed(self, seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        if self.cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            # warn_only: on CUDA a few ops used here (the 2-D NLL loss, bilinear upsampling's backward) have no
            # deterministic kernel; they warn instead of stopping the run, everything else is deterministic.
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.amp == "off":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.cfg.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def state(self, iteration: int) -> dict:
        """Everything a resumed run needs; ``model``/``config`` also make it an ``ssfdan-eval`` checkpoint."""
        opt = lambda o: None if o is None else o.state_dict()  # noqa: E731
        self._check_finite_weights(iteration)
        return {"model": self.model.state_dict(), "config": dict(self.model.config),
                "discriminators": self.discs.state_dict(), "opt_g": self.opt_g.state_dict(),
                "opt_d": opt(self.opt_d), "sched_g": self.sched_g.state_dict(), "sched_d": opt(self.sched_d),
                "scaler_g": self.scaler_g.state_dict(), "scaler_d": self.scaler_d.state_dict(),
                "iteration": iteration, "rng": rng_state(), "best_miou": self.best,
                "train_config": self.cfg.to_dict(), "world_size": self.dist.world_size}

    def _resume(self) -> dict | None:
        """Load the newest checkpoint; returns its RNG states (restored once everything is built), or None."""
        # On the CPU: the RNG states must stay CPU tensors; load_state_dict moves the rest to the parameters.
        # A damaged newest checkpoint is reported and the one before it used.
        found = self.ckpt.load_newest(report=print if self.dist.is_main else None)
        if found is None:
            if self.dist.is_main:
                print(f"resume=true but {self.ckpt.directory} holds no checkpoint: starting afresh")
            return None
        path, state = found
        _check_resumable(self.cfg, self.dist.world_size, state, path)
        self.model.load_state_dict(state["model"])
        self.discs.load_state_dict(state["discriminators"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        if self.opt_d is not None:
            self.opt_d.load_state_dict(state["opt_d"])
            self.sched_d.load_state_dict(state["sched_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])
        self.start, self.best = int(state["iteration"]), float(state["best_miou"])
        if self.dist.is_main:
            print(f"resumed from {path} at iteration {self.start}")
        return state["rng"]

    def _check_finite_weights(self, iteration: int) -> None:
        named = [*self.model.state_dict().items(), *self.discs.state_dict().items()]
        check_finite_tensors(named, iteration, self.ckpt.latest)

    # --- one iteration ----------------------------------------------------------------------------------------
    def _normalized(self, terms: list[LossTerm]) -> Tensor:
        # Starting from a zero tensor: no terms (no discriminator, self-training alone) is a 0 loss, and 0 + x == x.
        return sum((D.global_normalize(t.loss, t.count, self.dist) for t in terms), torch.zeros((), device=self.device))

    def step(self, it: int) -> dict:
        """Iteration ``it`` (docs/semantics.md section 5); returns the CSV row (losses averaged over the global
        batch)."""
        cfg, dev = self.cfg, self.device
        self.model_ddp.train()
        if cfg.freeze_bn:
            _freeze_bn(self.model)
        rho = rho_schedule(it, cfg.iterations, cfg.rho_upper) if cfg.progressive else 1.0
        img_s, lbl_s, _ = next(self.source_iter)
        img_s, lbl_s = img_s.to(dev, non_blocking=True), lbl_s.to(dev, non_blocking=True)
        self.opt_g.zero_grad(set_to_none=True)
        if self.opt_d is not None:
            self.opt_d.zero_grad(set_to_none=True)
        with self._autocast():
            logits_s, feat_s = self.model_ddp(img_s)
            pred_s = F.interpolate(logits_s, size=lbl_s.shape[-2:], mode="bilinear", align_corners=True)
            count_s = (lbl_s != IGNORE).sum()
            loss_seg = F.cross_entropy(pred_s.float(), lbl_s, ignore_index=IGNORE, reduction="sum")
            loss_seg = D.global_normalize(loss_seg / count_s.clamp(min=1), count_s, self.dist)
        loss_adv = loss_d = loss_st = torch.zeros((), device=dev)
        tau = kept = None
        self_train = cfg.self_training > 0
        if not self.discs.active and not self_train:
            self.scaler_g.scale(loss_seg).backward()
        else:
            img_t = next(self.target_iter)[0].to(dev, non_blocking=True)
            with self._autocast():
                logits_t, feat_t = self.model_ddp(img_t)
                pred_t = F.interpolate(logits_t, size=img_t.shape[-2:], mode="bilinear", align_corners=True)
            # Each domain's masks at its own feature size: source and target images may differ in size.
            # Diverged weights give NaN logits, which confidence_select refuses before any loss is on the host.
            with divergence_explained((("loss_seg", loss_seg), ("target logits", pred_t)), it, self.ckpt.latest):
                masks_t, tau = self.discs.target_masks(pred_t.detach(), rho, tuple(feat_t.shape[-2:]))
                kept = masks_t.kept
                masks_s = self.discs.source_masks(pred_s.detach(), lbl_s, rho, tuple(feat_s.shape[-2:]))
                if self_train and masks_t.labels is None:
                    # No SS-D selection to share: the same confidence selection, computed for self-training.
                    sel = confidence_select(pred_t.detach().float(), rho)
                    masks_t, tau, kept = masks_t._replace(labels=sel.labels), sel.tau, sel.counts
            self.discs.requires_grad_(False)  # generator step: the discriminators are fixed
            with self._autocast():
                loss_adv = self._normalized(self.discs.generator_terms(feat_t, masks_t))
            loss_g = loss_seg + cfg.delta * loss_adv
            if self_train:
                loss_st = self._normalized([self_training_term(pred_t, masks_t.labels, tau if cfg.car else None)])
                loss_g = loss_g + cfg.self_training * loss_st
            self.scaler_g.scale(loss_g).backward()
            self.discs.requires_grad_(True)  # discriminator step on detached features
            if self.discs.active:
                with self._autocast():
                    terms = self.discs_ddp(feat_s.detach(), feat_t.detach(), masks_s, masks_t,
                                           split=self.dist.enabled)
                    loss_d = self._normalized(terms)
                self.scaler_d.scale(loss_d).backward()
        lrs = (self.opt_g.param_groups[0]["lr"], self.opt_d.param_groups[0]["lr"] if self.opt_d is not None else 0.0)
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.sched_g.step()
        if self.opt_d is not None:
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
            self.sched_d.step()
        # The kept target pixels ride along with the losses (one host read): rho_schedule starts at 0, so the SS-D
        # losses are exactly 0 at first and a user should see how many pixels carry them.
        kept_total = kept.sum().float() if kept is not None else torch.zeros((), device=dev)
        logged = D.mean_over_ranks(torch.stack([loss_seg.detach().float(), loss_adv.detach().float(),
                                                loss_d.detach().float(), kept_total, loss_st.detach().float()]),
                                   self.dist).tolist()
        losses = logged[:3] + logged[4:5]
        # The losses are on the host already (for the log): a diverged run stops here, before it is checkpointed.
        check_finite_losses(("loss_seg", "loss_adv", "loss_d", "loss_st"), losses, it, self.ckpt.latest)
        row = {"iteration": it, "loss_seg": losses[0], "loss_adv": losses[1], "loss_d": losses[2],
               "rho": float(rho), "lr": lrs[0], "lr_d": lrs[1],
               "kept_pixels": int(round(logged[3] * self.dist.world_size)), "loss_st": losses[3]}
        self._tau, self._kept = tau, kept
        return row

    # --- validation, logging, checkpoints ---------------------------------------------------------------------
    def validate(self, step: int) -> EvalResult:
        """Target-domain mIoU on the validation set (main process); logs it and sample predictions."""
        cfg = self.cfg
        data = torch.utils.data.DataLoader(self.val, batch_size=cfg.val_batch_size, num_workers=cfg.num_workers)
        with self._autocast():
            result = evaluate(self.model, data, device=self.device, progress=False)
        self.tb.scalars({"val/mIoU": result.miou, "val/pixel_accuracy": result.pixel_accuracy}, step)
        self.tb.per_class("val_IoU", result.iou, result.class_names, step)
        if cfg.save_images and self.tb.writer is not None:
            self.tb.images("val/prediction", self._prediction_images(cfg.save_images), step)
        return result

    @torch.no_grad()
    def _prediction_images(self, count: int) -> list[np.ndarray]:
        was = self.model.training
        self.model.eval()
        images = []
        for i in range(min(count, len(self.val))):
            image, label, _ = self.val[i]
            logits = self.model(image[None].to(self.device))[0]
            pred = F.interpolate(logits.float(), size=label.shape[-2:], mode="bilinear", align_corners=True)[0]
            colours = [np.asarray(colorize(x, self.cfg.num_classes).convert("RGB")) for x in (pred.argmax(0), label)]
            images.append(np.concatenate(colours, axis=1))  # prediction | ground truth
        self.model.train(was)
        return images

    def _write_figure(self) -> None:
        from .figure import save_target_samples

        path = save_target_samples(self.model, self.val, self.out_dir / "target_samples.png", self.cfg.sample_figure,
                                   self.cfg.num_classes, self.val.class_names, self.device,
                                   getattr(self.model, "normalization", "imagenet"))
        print(f"wrote {min(self.cfg.sample_figure, len(self.val))} held-out target scenes (image | ground truth | "
              f"prediction) to {path}")

    def _log(self, row: dict, progress: Progress) -> None:
        it = row["iteration"]
        self.csv.write(row)
        show = {k: row[k] for k in ("loss_seg", "loss_adv", "loss_d", "loss_st")}
        progress.update({**show, "rho": row["rho"], "kept": row["kept_pixels"]})
        if (it + 1) % self.cfg.log_every == 0:
            self.tb.scalars({f"loss/{k[5:]}": v for k, v in show.items()}, it + 1)
            self.tb.scalars({"rho": row["rho"], "lr/segmenter": row["lr"], "lr/discriminator": row["lr_d"]},
                            it + 1)
            if self._tau is not None:
                tau = self._tau.detach().float().cpu()
                present = tau > 0
                mean = (tau.sum(0) / present.sum(0).clamp(min=1)).masked_fill(present.sum(0) == 0, float("nan"))
                self.tb.per_class("tau", mean, self.val.class_names, it + 1)
            if self._kept is not None:  # target pixels kept per class (this process's batch)
                self.tb.per_class("kept_pixels", self._kept.sum(0).float().cpu(), self.val.class_names, it + 1)
                self.tb.scalars({"kept_pixels/all": row["kept_pixels"]}, it + 1)

    def run(self) -> TrainResult:
        """Train from ``self.start`` to ``cfg.iterations``, then report the target-domain IoU table."""
        cfg, main = self.cfg, self.dist.is_main
        progress = Progress(cfg.iterations, self.start, cfg.progress and main)
        t0 = time.perf_counter()
        for it in range(self.start, cfg.iterations):
            row = self.step(it)
            row["seconds"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            done = it + 1
            if main:
                self._log(row, progress)
            new_best = False
            if cfg.val_every and done % cfg.val_every == 0 and done < cfg.iterations:
                if main:
                    res = self.validate(done)
                    progress.write(f"iteration {done}: target mIoU {100 * res.miou:.2f}")
                    new_best = res.miou > self.best
                    self.best = max(self.best, res.miou)
                D.barrier(self.dist)
            if main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                self.ckpt.save(self.state(done), done)
            if main and new_best:
                self.ckpt.save_best(self.state(done))
        progress.close()
        result = None
        if main:
            result = self.validate(cfg.iterations)
            if result.miou > self.best:
                self.best = result.miou
                self.ckpt.save_best(self.state(cfg.iterations))
            from ..models import save_checkpoint

            self._check_finite_weights(cfg.iterations)
            save_checkpoint(self.model, self.out_dir / "final.pt", iteration=cfg.iterations)
            write_iou_table(result.iou, result.class_names, self.out_dir / "iou")
            if cfg.sample_figure:
                self._write_figure()
            print(f"target-domain IoU after {cfg.iterations} iterations ({cfg.adaptation}, {cfg.name}):")
            print(iou_table(result.iou, result.class_names), end="", flush=True)
        D.barrier(self.dist)
        return TrainResult(self.model, self.discs, result, self.out_dir, self.history)

    def close(self) -> None:
        """Close the logs, leave the process group and restore the thread count."""
        if self.csv is not None:
            self.csv.close()
        self.tb.close()
        # DistributedDataParallel's reducers hold the process group: released before leaving it, the group is then
        # destroyed by destroy_process_group (which releases the GIL while gloo's threads finish), not by a reducer
        # freed later while holding the GIL. The latter hung a two-process CPU run at exit once with torch 2.11: a
        # gloo thread waited for the GIL to free a finished collective's tensors while the reducer waited for it.
        self.model_ddp, self.discs_ddp = self.model, self.discs
        gc.collect()
        D.cleanup(self.dist)
        torch.set_num_threads(self._threads)
        if self._lock is not None:
            self._lock.release()


# Keys that must not change when a run is resumed: they define the model, the data stream or the schedule.
_RESUME_KEYS = ("num_classes", "model", "model_kwargs", "adaptation", "disc_channels", "disc_strides", "iterations",
                "batch_size", "seed", "data_seed", "source", "target", "amp", "power", "synthetic_shift",
                "synthetic_shift_seed")


def _check_resumable(cfg: TrainConfig, world_size: int, state: dict, path: Path) -> None:
    saved = state.get("train_config", {})
    plain = lambda v: [plain(x) for x in v] if isinstance(v, (list, tuple)) else v  # noqa: E731
    changed = [k for k in _RESUME_KEYS if k in saved and plain(saved[k]) != plain(getattr(cfg, k))]
    if state.get("world_size", world_size) != world_size:
        changed.append(f"processes ({state['world_size']} -> {world_size})")
    if changed:
        raise ConfigError(f"cannot resume from {path}: the run was made with other values of "
                          f"{', '.join(changed)}; resume with the checkpoint's values or start a new out_dir")


def train(cfg: TrainConfig) -> TrainResult:
    """Run a whole training as configured (resuming when ``cfg.resume``).

    Shapes: n/a.
    """
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        trainer.close()
