"""Robust training of Stable-SAM's plugins (and the DT-SAM / PT-SAM baselines) on HQSeg-style data.

One process, CPU or one GPU (no launcher, no process group); `data` is HQ-SAM's data/ folder:

    stable-sam train --model-type vit_l --sam-checkpoint sam_vit_l_0b3195.pth \\
        --hqseg44k-root data --out runs/stable_sam

Several GPUs on one node (DDP; the batch size is per process, the paper's 32 = 8 x 4):

    torchrun --standalone --nproc_per_node 8 -m stable_sam.cli train --model-type vit_l \\
        --sam-checkpoint sam_vit_l_0b3195.pth --hqseg44k-root data --batch-size 4 \\
        --out runs/stable_sam

Resume after an interruption (same step, optimiser, RNG states and data order; bit-identical
with `--deterministic`, tested on CPU): `stable-sam train --out runs/stable_sam --resume`.

The tiny CPU demo (random `tiny` SAM, generated shapes, 500 steps in about a minute on two cores):

    stable-sam train --preset tiny --out runs/tiny

Design: the image encoder and prompt encoder run under no_grad; only the chosen method's
parameters (see `stable_sam.training.baselines`) get gradients. Every random draw that decides a sample
(jitter, occlusion, prompt) is seeded by (seed, dataset, image, epoch), so results do not depend
on the number of data-loader workers, and the data order of an epoch is a DistributedSampler
permutation seeded by (seed, epoch), so a resumed run replays it from the saved position.

This module is the loop; beside it in `stable_sam.training`: `config` (TrainConfig, presets, lr
schedule), `samples` (data and its order), `model` (the model and its prompted decoder),
`losses`, `checkpointing` (checkpoint.pt and the final weights), `rng`, `distributed`, `log`
(log.csv, tensorboard, console) and `signals` (SIGTERM).
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from . import baselines
from .checkpointing import (
    CHECKPOINT_NAME,
    open_resume_checkpoint,
    prepare_out_dir,
    restore_training_state,
    save_final_weights,
    write_train_checkpoint,
)
from .config import TrainConfig, get_lr
from .data_check import check_training_data
from .distributed import (
    DistContext,
    gather_from_ranks,
    gather_kinds,
    init_process_group,
    mean_over_ranks,
    resolve_device,
)
from .embedding_cache import EmbeddingCache
from .log import TrainingLog
from .losses import mask_loss
from .model import PromptedDecoder, build_model, model_input_size
from .rng import capture_rng_state, seed_everything, step_generator
from .samples import TrainingSamples, closing_batches, epoch_loader, load_datasets
from .signals import StopRequest

__all__ = ["train"]


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          ctx: Optional[DistContext] = None, announce_stop: bool = True) -> Dict[str, Any]:
    """Runs (or resumes) training; see `_train`. A new run refuses an output folder that holds
    a run unless `overwrite`. `announce_stop=False` leaves the line about a stopped run to the
    caller (`stable-sam reproduce` says how to continue in its own words). Restores torch's deterministic-algorithms switch, thread count and
    SIGTERM handler afterwards, so an in-process call leaks none."""
    prepare_out_dir(config.out_dir, resume=resume, overwrite=overwrite)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    try:
        with StopRequest() as stop:
            result = _train(config, resume=resume, ctx=ctx, stop=stop)
        if result.pop("is_main") and result["stopped"] and announce_stop:
            print(f"stopped by SIGTERM after step {result['step']}; {result['checkpoint']} is "
                  "up to date, continue with --resume", file=sys.stderr, flush=True)
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)


@dataclass
class _Run:
    """What a run builds before its first step and keeps to its end."""

    config: TrainConfig
    ctx: DistContext
    device: torch.device
    spec: baselines.MethodSpec
    model: nn.Module
    decoder: nn.Module  # the PromptedDecoder, inside DDP when there are several processes
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    samples: TrainingSamples
    steps_per_epoch: int
    total_steps: int
    owns_group: bool  # this run started the process group, so it also ends it
    embedding_cache: Optional[EmbeddingCache] = None  # config.cache_embeddings

    @property
    def out_dir(self) -> Path:
        return Path(self.config.out_dir)


def _train(config: TrainConfig, *, resume: bool, ctx: Optional[DistContext],
           stop: StopRequest) -> Dict[str, Any]:
    """Runs (or resumes) training; returns a dict: step, loss (last step's), model (the trained
    StableSam), checkpoint, stopped (True when SIGTERM ended the run early, after writing a
    checkpoint) and, on rank 0 of a finished run, weights (the final plugin / baseline file).

    With `resume`, the run continues from `<out_dir>/checkpoint.pt`; `config` must equal the
    checkpoint's config (`saved_config(out_dir)`) except in RESUME_MAY_CHANGE fields.
    """
    ctx = ctx if ctx is not None else DistContext.from_env()
    ckpt = open_resume_checkpoint(Path(config.out_dir), config, ctx.world_size) if resume else None
    run = _build_run(config, ctx)
    step = _restore_or_start(run, ckpt)
    log = TrainingLog(run.out_dir, ctx, resume_step=step if ckpt is not None else None, step=step,
                      total_steps=run.total_steps, log_every=config.log_every,
                      global_batch=config.batch_size * ctx.world_size)
    last_loss = float("nan")
    stopped = False
    while step < run.total_steps and not stopped:
        epoch = step // run.steps_per_epoch
        loader = epoch_loader(run.samples, step, run.total_steps, run.steps_per_epoch, config,
                              ctx, pin_memory=run.device.type == "cuda")
        # closing(): an error in a step must shut the workers down now, not when the
        # traceback that still references this generator is freed.
        with contextlib.closing(closing_batches(loader)) as batches:
            for batch in batches:
                step_started = time.perf_counter()
                lr, losses, stop_votes = _run_step(run, batch, step, stop)
                step += 1
                kinds = gather_kinds(batch["kinds"], ctx)
                last_loss = losses[0]
                log.record(step, epoch, losses, lr, step_started, kinds)
                stopped = stop_votes > 0
                if step % config.ckpt_every == 0 or step == run.total_steps or stopped:
                    _save_checkpoint(run, step)
                if stopped:
                    break
    return _finish(run, log, step, last_loss, stopped)


def _build_run(config: TrainConfig, ctx: DistContext) -> _Run:
    """Joins the process group, seeds, and builds the model, its optimiser and the samples."""
    spec = baselines.get_method(config.method)
    device = resolve_device(config.device, ctx)
    if config.amp == "fp16" and device.type != "cuda":
        # fp16 needs loss scaling, which only CUDA's GradScaler gives; running without it would
        # silently train in float32 while the config says fp16.
        raise ValueError(f"--amp fp16 needs a CUDA device, the run is on {device}; "
                         f"use --amp bf16 on the CPU")
    # The data first: a bad file stops the run before anything heavy is built.
    datasets = check_training_data(load_datasets(config), config.skip_bad_samples,
                                   report=ctx.is_main)
    owns_group = ctx.distributed and not dist.is_initialized()
    init_process_group(ctx, device)
    _configure_torch(config, device)
    seed_everything(config.seed, ctx.rank)

    model = build_model(config).to(device)
    trainable = baselines.freeze_all_but_trainable(model, spec.name)
    model.eval()  # SAM has no dropout/batch-norm; eval keeps any future ones frozen too
    decoder = PromptedDecoder(model, spec.uses_plugins)
    if ctx.distributed:
        decoder = nn.parallel.DistributedDataParallel(
            decoder, device_ids=[device.index] if device.type == "cuda" else None,
            # dt_sam's IoU head gets no gradient from the mask loss
            find_unused_parameters=True,
            broadcast_buffers=False,  # SAM's buffers (pixel mean/std, PE matrix) never change
        )
    params = [p for _, p in trainable]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")

    samples = TrainingSamples(datasets, config, model_input_size(model))
    global_batch = config.batch_size * ctx.world_size
    steps_per_epoch = len(samples) // global_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"the training data has {len(samples)} images, fewer than one global batch "
            f"({config.batch_size} x {ctx.world_size} processes)"
        )
    total_steps = config.steps if config.steps > 0 else config.epochs * steps_per_epoch
    cache = EmbeddingCache(device) if config.cache_embeddings else None
    return _Run(config, ctx, device, spec, model, decoder, optimizer, scaler, samples,
                steps_per_epoch, total_steps, owns_group, cache)


def _configure_torch(config: TrainConfig, device: torch.device) -> None:
    if config.deterministic:
        if device.type == "cuda":  # cuBLAS needs this to be reproducible; read at first use
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: the "full" loss's bilinear upsampling has no deterministic CUDA backward;
        # the "points" loss and the plugin op do.
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cpu" and config.cpu_threads > 0:
        torch.set_num_threads(config.cpu_threads)


def _restore_or_start(run: _Run, ckpt: Optional[Dict[str, Any]]) -> int:
    """The step to start from: 0, or the checkpoint's once its state is back in place."""
    if ckpt is None:
        return 0
    return restore_training_state(ckpt, run.model, run.spec.name, run.optimizer, run.scaler,
                                  run.steps_per_epoch, run.ctx.rank, run.device)


def _autocast(config: TrainConfig, device: torch.device):
    # bf16 needs no loss scaling, so it runs on the CPU too; fp16 is refused off CUDA (_build_run).
    if config.amp == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.bfloat16 if config.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run_step(run: _Run, batch: Dict[str, Any], step: int,
              stop: StopRequest) -> Tuple[float, List[float], float]:
    """One optimiser step at 0-based `step`; returns its lr, its (loss, bce, dice) averaged over
    the ranks, and the ranks' stop vote (> 0 when any rank was asked to stop)."""
    config, device, model = run.config, run.device, run.model
    lr = get_lr(config, step, run.steps_per_epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    targets = batch["mask"].to(device, non_blocking=True)
    prompts = batch["prompts"]
    if run.embedding_cache is not None:
        def encode(batch_images):
            with _autocast(config, device):
                return model.image_encoder(model.preprocess(batch_images.float()))

        embeddings = run.embedding_cache.lookup(batch["image"], encode, batch["reusable_images"])
    else:
        images = batch["image"].to(device, non_blocking=True).float()
        with torch.no_grad(), _autocast(config, device):
            embeddings = model.image_encoder(model.preprocess(images))
    with _autocast(config, device):
        logits = run.decoder(embeddings, prompts)
    bce, dice = mask_loss(
        config.loss, logits.float(), targets, num_points=config.num_points,
        oversample_ratio=config.oversample_ratio,
        importance_sample_ratio=config.importance_sample_ratio,
        generator=step_generator(config.seed, step, run.ctx.rank, device),
    )
    loss = bce + dice
    # Averaged over ranks before the update: every rank sees the same value, so a
    # non-finite loss stops all of them before it reaches the weights or a checkpoint.
    # The stop request rides along, so every rank stops after the same step.
    flags = torch.stack([loss.detach(), bce.detach(), dice.detach(),
                         loss.new_tensor(float(stop.requested))])
    *losses, stop_votes = mean_over_ranks(flags, run.ctx).tolist()
    if not math.isfinite(losses[0]):
        checkpoint = run.out_dir / CHECKPOINT_NAME
        if checkpoint.is_file():
            advice = (f"{checkpoint} is intact: lower --lr or use --amp bf16 instead of fp16, "
                      "then --resume")
        else:
            advice = ("no checkpoint was written yet: check the data and the config (lower "
                      "--lr, --amp bf16 instead of fp16), then start again with --overwrite")
        raise FloatingPointError(f"loss is {losses[0]} at step {step + 1}; stopping ({advice})")
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return lr, losses, stop_votes


def _save_checkpoint(run: _Run, step: int) -> None:
    """Every rank hands in its RNG state; rank 0 writes the checkpoint."""
    rng = gather_from_ranks(capture_rng_state(run.device), run.ctx)
    if run.ctx.is_main:
        write_train_checkpoint(
            run.out_dir / CHECKPOINT_NAME, config=run.config, step=step,
            steps_per_epoch=run.steps_per_epoch, world_size=run.ctx.world_size, model=run.model,
            method=run.spec.name, optimizer=run.optimizer, scaler=run.scaler, rng=rng,
        )


def _finish(run: _Run, log: TrainingLog, step: int, last_loss: float,
            stopped: bool) -> Dict[str, Any]:
    """Writes the final weights of a finished run, closes the logs and leaves the process
    group; returns `_train`'s result."""
    log.close_progress_bar()
    out_dir = run.out_dir
    result: Dict[str, Any] = {"step": step, "loss": last_loss, "model": run.model,
                              "checkpoint": str(out_dir / CHECKPOINT_NAME), "stopped": stopped}
    result["is_main"] = run.ctx.is_main
    if run.ctx.is_main and not stopped:
        result["weights"] = str(save_final_weights(run.model, run.config, run.spec, out_dir))
    log.close()
    if run.ctx.distributed:
        dist.barrier()
        if run.owns_group:
            dist.destroy_process_group()
    return result
