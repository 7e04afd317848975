"""The training loop shared by both stages, and the two stages' steps (MAR's engine split: this file builds
nothing from the command line; `train/cli.py` parses, this runs).

One optimizer step = `gradient_accumulation_steps` micro-batches. The learning rate is a pure function of the step
("cosine_with_minimum", spec §1.8), so a resume restores it exactly; models, optimizers, EMA, LeCAM state and every
process's RNG go through `accelerator.save_state`, and the data position follows from the step (`train/data.py`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import signal
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm import tqdm

from maskbit import Generator, Tokenizer, bits, iter_generate, prediction_to_indices
from maskbit.device import fit_threads, mixed_precision, pick_device
from maskbit.files import DiskFullError, disk_full_message, explain_full_disk, is_full_disk, write_json_atomic
from maskbit.images import image_grid, psnr, save_image
from maskbit.sampling import check_pair, training_mask_ratios
from train.config import GeneratorTrainConfig, OptimizerConfig, TokenizerTrainConfig, to_dict
from train.data import AugmentedImages, ResumableBatchSampler, TokenFile, batches
from train.ema import EMA
from train.losses import (
    Discriminator,
    LeCAM,
    build_perceptual_loss,
    entropy_annealing,
    hinge_discriminator_loss,
    hinge_generator_loss,
    masked_modelling_loss,
)
from train.rundir import RunDir

logger = logging.getLogger("train")

__all__ = ["lr_factor", "train"]


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up from 0, then cosine from 1 to min_ratio (official "cosine_with_minimum")."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return cosine + min_ratio - min_ratio * cosine


def make_optimizer(params, config: OptimizerConfig, learning_rate: float | None = None) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        params,
        lr=learning_rate or config.learning_rate,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
        eps=config.eps,
    )


def set_lr(optimizer: torch.optim.Optimizer, base: float, factor: float) -> float:
    for group in optimizer.param_groups:
        group["lr"] = base * factor
    return base * factor


# ---------------------------------------------------------------------------------------------------- stages


class Stage:
    """What the loop needs of a stage; the two stages below differ in their models, data and step."""

    model_class: type
    model: torch.nn.Module
    ema: EMA | None
    accelerator: Accelerator
    class_names: list[str]

    def after_step(self) -> None:
        if self.ema is not None and self.accelerator.sync_gradients:
            self.ema.update(self.accelerator.unwrap_model(self.model))

    def export_model(self):
        """A plain copy of the model with the EMA weights (the raw ones without EMA), in eval mode."""
        model = self.accelerator.unwrap_model(self.model)
        with torch.random.fork_rng(devices=[]):  # building a model draws initial weights: keep the RNG stream
            exported = self.model_class(model.config)
        exported.load_state_dict(model.state_dict())
        return (self.ema.copy_to(exported) if self.ema is not None else exported).eval()


class TokenizerStage(Stage):
    """Stage I: autoencoder with its quantiser's losses (LFQ, or VQ with the codebook term), perceptual and GAN
    losses (spec §1.7, §1.10)."""

    model_class = Tokenizer

    def __init__(self, config: TokenizerTrainConfig, accelerator: Accelerator):
        from data.datasets import build_dataset

        self.config, self.accelerator = config, accelerator
        self.perceptual = build_perceptual_loss(config.loss)  # fails here, at start-up, if weights are missing
        dataset = build_dataset(config.data.dataset, config.data.split, config.data.seed, config.data.resolution)
        self.dataset = AugmentedImages(dataset, config.data, seed=config.training.seed)
        self.class_names = list(getattr(dataset, "classes", []))
        self.model = Tokenizer(config.model)
        self.discriminator = Discriminator(config.discriminator)
        self.lecam = LeCAM(config.loss.lecam_ema_decay)
        self.optimizer = make_optimizer(self.model.parameters(), config.optimizer)
        self.d_optimizer = make_optimizer(
            self.discriminator.parameters(), config.optimizer, config.loss.discriminator_learning_rate
        )
        self.model, self.discriminator, self.optimizer, self.d_optimizer = accelerator.prepare(
            self.model, self.discriminator, self.optimizer, self.d_optimizer
        )
        if self.perceptual is not None:
            self.perceptual.to(accelerator.device)
        self.lecam.to(accelerator.device)
        accelerator.register_for_checkpointing(self.lecam)
        self.ema = (
            EMA(accelerator.unwrap_model(self.model), config.training.ema_decay) if config.training.use_ema else None
        )
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)
        eval_set = build_dataset(
            config.data.dataset,
            "test" if config.data.dataset == "procedural" else config.data.split,
            config.data.seed,
            config.data.resolution,
        )
        eval_view = AugmentedImages(eval_set, config.data, seed=0, train=False)
        count = min(config.training.num_samples, len(eval_view))
        self.eval_images = torch.stack([eval_view[i][0] for i in range(count)])

    def models(self) -> list[torch.nn.Module]:
        return [self.model, self.discriminator]

    def set_lr(self, step: int) -> dict[str, float]:
        o, t, loss = self.config.optimizer, self.config.training, self.config.loss
        lr = set_lr(self.optimizer, o.learning_rate, lr_factor(step, o.warmup_steps, t.max_steps, o.min_lr_ratio))
        d_step = step - loss.discriminator_start
        d_factor = lr_factor(max(0, d_step), o.warmup_steps, t.max_steps - loss.discriminator_start, o.min_lr_ratio)
        set_lr(self.d_optimizer, loss.discriminator_learning_rate, d_factor)
        return {"lr": lr}

    def micro_step(self, batch, step: int) -> dict[str, float]:
        c, acc = self.config.loss, self.accelerator
        images = batch[0].to(acc.device, non_blocking=True)
        gan_on = step >= c.discriminator_start
        factor = c.discriminator_factor if gan_on else 0.0
        with acc.accumulate(self.model, self.discriminator):
            out = self.model(images)
            reconstructions, q = out.reconstructions, out.quantizer
            reconstruction_loss = F.mse_loss(reconstructions.float(), images)
            quantizer_term = q.quantizer_loss + entropy_annealing(step, c) * q.entropy_loss
            loss = c.reconstruction_weight * reconstruction_loss + c.quantizer_weight * quantizer_term
            logs = {
                "reconstruction_loss": reconstruction_loss,
                "commitment_loss": q.commitment_loss,
                "entropy_loss": q.entropy_loss,
                "per_sample_entropy": q.per_sample_entropy,
                "avg_entropy": q.avg_entropy,
                "codes_in_batch": q.indices.unique().numel(),  # falls when a codebook collapses
            }
            if self.config.model.quantizer == "vq":
                logs["codebook_loss"] = q.codebook_loss
            if self.perceptual is not None:
                perceptual_loss = self.perceptual(images, reconstructions.float())
                loss = loss + c.perceptual_weight * perceptual_loss
                logs["perceptual_loss"] = perceptual_loss
            if gan_on:
                # The discriminator judges the reconstructions with frozen weights: its gradients come from L_D only.
                d = acc.unwrap_model(self.discriminator)
                frozen = {k: v.detach() for k, v in d.named_parameters()}
                fake_logits = torch.func.functional_call(d, (frozen, dict(d.named_buffers())), (reconstructions,))
                generator_loss = hinge_generator_loss(fake_logits)
                loss = loss + c.discriminator_weight * factor * generator_loss
                logs["gan_generator_loss"] = generator_loss
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.model.parameters(), self.config.optimizer.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if gan_on:
                real_logits = self.discriminator(images)
                fake_logits = self.discriminator(reconstructions.detach())
                lecam = self.lecam(real_logits, fake_logits)
                d_loss = factor * hinge_discriminator_loss(real_logits, fake_logits) + c.lecam_weight * lecam
                acc.backward(d_loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(self.discriminator.parameters(), self.config.optimizer.max_grad_norm)
                self.d_optimizer.step()
                self.d_optimizer.zero_grad(set_to_none=True)
                self.lecam.update(real_logits, fake_logits)
                logs |= {
                    "discriminator_loss": d_loss,
                    "lecam_loss": lecam,
                    "logits_real": real_logits.mean(),
                    "logits_fake": fake_logits.mean(),
                }
        logs["loss"] = loss
        return {k: float(v) for k, v in logs.items()}

    @torch.no_grad()
    def samples(self, model: Tokenizer) -> tuple[torch.Tensor, dict[str, float]]:
        """Eval images (top) over their reconstructions (bottom), and the mean PSNR."""
        reconstructions = model.decode(model.encode(self.eval_images)).clamp(0, 1)
        grid = image_grid(torch.cat([self.eval_images, reconstructions]), columns=len(self.eval_images))
        return grid, {"eval_psnr": float(psnr(reconstructions, self.eval_images).mean())}


class GeneratorStage(Stage):
    """Stage II: masked bit-group modelling over a frozen tokenizer's tokens (spec §2.4)."""

    model_class = Generator

    def __init__(self, config: GeneratorTrainConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        if not config.tokenizer and not config.data.pretokenized:
            raise ValueError("set tokenizer=<from_pretrained source> (and/or data.pretokenized=<token file>)")
        self.tokenizer = None
        if config.tokenizer:
            self.tokenizer = Tokenizer.from_pretrained(config.tokenizer, config.tokenizer_config or None)
            self.tokenizer.inference(accelerator.device)
            check_pair(config.model, self.tokenizer)
        if config.data.pretokenized:
            self.dataset = TokenFile(config.data.pretokenized)
            self._check_token_file()
            self.class_names = list(self.dataset.meta.get("classes", []))
        else:
            from data.datasets import build_dataset

            dataset = build_dataset(config.data.dataset, config.data.split, config.data.seed, config.data.resolution)
            self.dataset = AugmentedImages(dataset, config.data, seed=config.training.seed)
            self.class_names = list(getattr(dataset, "classes", []))
        if len(self.class_names) > config.model.num_classes:
            raise ValueError(
                f"the dataset has {len(self.class_names)} classes but model.num_classes is {config.model.num_classes}"
            )
        self.model = Generator(config.model)
        self.optimizer = make_optimizer(self.model.parameters(), config.optimizer)
        self.model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        self.ema = (
            EMA(accelerator.unwrap_model(self.model), config.training.ema_decay) if config.training.use_ema else None
        )
        if self.ema is not None:
            accelerator.register_for_checkpointing(self.ema)

    def _check_token_file(self) -> None:
        meta, model = self.dataset.meta, self.config.model
        grid = self.dataset.indices.shape[1:]
        if meta.get("quantizer", "lfq") != "lfq":
            raise ValueError(f"{self.dataset.path} holds a vector-quantised tokenizer's tokens; a generator needs bits")
        if meta.get("num_bits") != model.token_size or tuple(grid) != (model.grid_size, model.grid_size):
            raise ValueError(
                f"{self.dataset.path} holds {meta.get('num_bits')}-bit tokens on a {grid} grid; the model expects "
                f"{model.token_size} bits on {model.grid_size}×{model.grid_size}"
            )
        if self.tokenizer is not None and meta.get("tokenizer_identity") != self.tokenizer.identity():
            raise ValueError(f"{self.dataset.path} was made with another tokenizer than {self.config.tokenizer}")
        if int(self.dataset.labels.max()) >= model.num_classes:
            raise ValueError(f"{self.dataset.path} has labels ≥ model.num_classes = {model.num_classes}")

    def models(self) -> list[torch.nn.Module]:
        return [self.model]

    def set_lr(self, step: int) -> dict[str, float]:
        o, t = self.config.optimizer, self.config.training
        return {
            "lr": set_lr(self.optimizer, o.learning_rate, lr_factor(step, o.warmup_steps, t.max_steps, o.min_lr_ratio))
        }

    def micro_step(self, batch, step: int) -> dict[str, float]:
        acc, model_config = self.accelerator, self.config.model
        inputs, labels = batch[0].to(acc.device), batch[1].to(acc.device)
        if inputs.is_floating_point():  # images: tokenise on the fly
            inputs = self.tokenizer.encode(inputs)
        groups = bits.split_groups(inputs.flatten(1), model_config.token_size, model_config.num_groups)  # (B, N, m)
        b = groups.shape[0]
        # a masking probability per sample (arccos: spec §2.4), every (position, group) masked independently with it
        ratio = training_mask_ratios(torch.rand(b, device=acc.device), self.config.mask_schedule)
        masked = torch.rand(groups.shape, device=acc.device) < ratio[:, None, None]
        tokens = torch.where(masked, model_config.mask_token, groups)
        drop = torch.rand(b, device=acc.device) < self.config.class_label_dropout
        with acc.accumulate(self.model):
            logits = self.model(tokens, labels, drop)
            loss = masked_modelling_loss(logits, groups, masked, self.config.label_smoothing, self.config.loss_on)
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self.model.parameters(), self.config.optimizer.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            correct = logits.argmax(-1) == groups
            masked_accuracy = correct[masked].float().mean() if masked.any() else torch.tensor(1.0)
        return {
            "loss": float(loss),
            "masked_accuracy": float(masked_accuracy),
            "mask_ratio": float(masked.float().mean()),
        }

    @torch.no_grad()
    def samples(self, model: Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """One row per class (up to 8 classes), generated with the configured sampling and a fixed seed."""
        if self.tokenizer is None:
            return None, {}
        classes = min(model.config.num_classes, 8)
        per_class = max(1, self.config.training.num_samples // classes)
        labels = [c for c in range(classes) for _ in range(per_class)]
        model.to(self.accelerator.device)
        state = None
        for state in iter_generate(model, labels, self.config.sampling, seed=0):
            pass
        images = self.tokenizer.decode(prediction_to_indices(state.prediction, model)).clamp(0, 1).cpu()
        return image_grid(images, columns=per_class), {}


# ---------------------------------------------------------------------------------------------------- the loop


class Stop(Exception):
    """SIGTERM or SIGINT: save a checkpoint and leave cleanly."""


def train(config: TokenizerTrainConfig | GeneratorTrainConfig, run_dir: str | Path, resume: bool = False) -> Path:
    """Run (or resume) a training job in `run_dir`; returns the exported model directory."""
    run = RunDir(run_dir)
    t = config.training
    device = pick_device()  # accelerate then takes this process's GPU when there are several
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=mixed_precision(t.mixed_precision, device),
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with="tensorboard" if t.tensorboard else None,
        project_dir=str(run.path),
    )
    main = accelerator.is_main_process
    start, checkpoint = 0, None
    if resume:
        checkpoint = run.latest_checkpoint()
        changed = _changed_keys(run.read_config(), json.loads(json.dumps(to_dict(config))))
        if changed:
            logger.warning("resuming with changed settings: %s", ", ".join(changed))
    elif run.latest_checkpoint() is not None:
        raise ValueError(f"{run.path} already holds a run with checkpoints; pass --resume or choose another --run-dir")
    if main:
        run.create()
        run.remove_partial_checkpoints()
        run.write_config(to_dict(config))
        run.write_status(
            state="starting",
            pid=os.getpid(),
            step=0,
            total_steps=t.max_steps,
            last_error=None,
            device=str(accelerator.device),
            mixed_precision=accelerator.mixed_precision,  # resolved by maskbit.device.mixed_precision
            stage=config.stage,
            num_processes=accelerator.num_processes,
        )
    _log_to_file(run, main)
    accelerator.wait_for_everyone()

    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signal.Signals(signum).name

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    try:
        set_seed(t.seed)  # identical initial weights on every process
        stage = (
            TokenizerStage(config, accelerator) if config.stage == "tokenizer" else GeneratorStage(config, accelerator)
        )
        set_seed(t.seed + accelerator.process_index)  # then each process its own masking and dropout stream
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint[1]))
            start = checkpoint[0]
            logger.info("resumed from %s at step %d", checkpoint[1], start)
            if main:
                run.append_metrics({"event": "resumed", "from_step": start, "time": time.time()})
        elif resume:
            logger.info("no complete checkpoint in %s: starting from step 0", run.path)
        if t.tensorboard:
            accelerator.init_trackers("tensorboard")
        micro_batches = start * t.gradient_accumulation_steps
        sampler = ResumableBatchSampler(
            len(stage.dataset),
            t.batch_size,
            t.seed,
            accelerator.process_index,
            accelerator.num_processes,
            micro_batches,
        )
        data = batches(stage.dataset, sampler, config.data.num_workers)
        if main:
            run.write_status(state="running", step=start)
        bar = tqdm(
            total=t.max_steps, initial=start, desc=config.stage, unit="step", disable=not main, dynamic_ncols=True
        )
        for model in stage.models():
            model.train()
        step = start
        last_time, images_seen = time.time(), 0
        while step < t.max_steps:
            fit_threads(accelerator.device)  # each step with the threads that fit the machine's load now
            logs = stage.set_lr(step)
            for _ in range(t.gradient_accumulation_steps):
                logs |= stage.micro_step(next(data), step)
            stage.after_step()
            step += 1
            images_seen += t.batch_size * t.gradient_accumulation_steps * accelerator.num_processes
            bar.update()
            if main and (step % t.sample_every == 0 or step == t.max_steps):
                logs |= _write_samples(stage, run, step)
            if step % t.log_every == 0 or step == t.max_steps:
                now = time.time()
                logs |= {"images_per_second": images_seen / max(now - last_time, 1e-9)}
                last_time, images_seen = now, 0
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "reconstruction_loss", "lr")})
                if main:
                    run.append_metrics({"step": step, "time": now, **logs})
                    run.write_status(state="running", step=step)
                    if t.tensorboard:
                        accelerator.log(logs, step=step)
            if step % t.save_every == 0 or step == t.max_steps or stop["signal"]:
                _save_checkpoint(accelerator, stage, run, step, config)
            if stop["signal"]:
                raise Stop(stop["signal"])
        bar.close()
        exported = run.model_dir
        if main:
            _export(stage, exported)
            run.write_status(state="finished", step=step, pid=None)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        return exported
    except Stop as stopped:
        if main:
            run.write_status(state="stopped", step=step, pid=None, last_error=None, stopped_by=str(stopped))
        logger.info("stopped by %s at step %d; resume with --resume", stopped, step)
        raise
    except BaseException as error:
        full = is_full_disk(error, run.path)
        if full:  # a checkpoint write explains itself (_save_checkpoint); any other write is explained here
            error = DiskFullError(disk_full_message(run.path, None, _kept(run, config.stage)))
        if main:
            with contextlib.suppress(OSError):  # on a full disk the status and the log may not be written either
                run.write_status(state="failed", pid=None, last_error=f"{type(error).__name__}: {error}")
                with open(run.log_path, "a") as log:
                    traceback.print_exc(file=log)
        if full:
            raise error from None
        raise


def _kept(run: RunDir, stage: str) -> str:
    """What a run that stops now keeps, and how to continue it."""
    latest = run.latest_checkpoint()
    kept = f"the run keeps its checkpoint step-{latest[0]}" if latest else "the run has no checkpoint yet"
    resume = f"python -m train {stage} --run-dir {run.path} --resume"
    return f"{kept} in {run.checkpoints_dir}; free space and continue with `{resume}`"


def _save_checkpoint(accelerator: Accelerator, stage, run: RunDir, step: int, config) -> None:
    """Every process writes its part into a temporary folder; the main process then renames it to step-N."""
    tmp = run.checkpoints_dir / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    latest = run.latest_checkpoint()
    needed = _folder_bytes(latest[1]) if latest else None  # a checkpoint is about as large as the one before
    try:
        with explain_full_disk(tmp, needed, _kept(run, config.stage)):
            accelerator.save_state(str(tmp))
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _export(stage, tmp / "model")
                meta = {"stage": config.stage, "time": time.time()}
                run.commit_checkpoint(tmp, step, meta, config.training.keep_last)
    except DiskFullError:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back; the run resumes from the last checkpoint
        raise
    accelerator.wait_for_everyone()


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _export(stage, directory: Path) -> None:
    """The EMA model in the own format, plus the dataset's class names (classes.json) when it has them."""
    stage.export_model().save_pretrained(directory, sampling=getattr(stage.config, "sampling", None))
    if stage.class_names:
        write_json_atomic(directory / "classes.json", list(stage.class_names))


def _write_samples(stage, run: RunDir, step: int) -> dict[str, float]:
    grid, metrics = stage.samples(stage.export_model())
    if grid is not None:
        save_image(grid, run.samples_dir / f"step-{step}.png")
    return metrics


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} → {b!r}")
    return changed


def _log_to_file(run: RunDir, main: bool) -> None:
    if main:
        handler = logging.FileHandler(run.log_path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.INFO)
