"""The fine-tuning loop: diffusion loss on concept photos (+ prior images), AdamW, exact resume.

`train_concepts(lp, specs, cfg)` adds each concept's token to the pipeline's tokenizer and text
encoder, trains the chosen weights in place (the pipeline ends up holding the fine-tuned model)
and returns the learned `Concept`. Only the new embedding rows and the tensors chosen by
`lcd.train.params` change; every other tensor stays bit-identical.

The token rows are a separate (n, D) parameter per text encoder (SDXL: CLIP-L and OpenCLIP-bigG
each learn the token's row) spliced into the embedding matrix out of place
(`torch.func.functional_call`), so the optimizer never sees, decays or stores state for the
49,408 existing rows. What the family conditions the UNet on: lcd.concepts.family, lcd.train.loss.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

import lcd
from lcd.concepts.family import family_of
from lcd.concepts.io import Concept, add_tokens, check_token
from lcd.errors import LcdError
from lcd.models.loader import LoadedPipeline, latent_factor
from lcd.progress import Progress
from lcd.train import checkpoint as ck
from lcd.train import data
from lcd.train.config import ConceptSpec, TrainConfig
from lcd.train.loss import batch_loss, concept_loss, diffusion_loss  # noqa: F401 - their old home
from lcd.train.params import add_lora, freeze_except

ROW_KEYS = ("token_rows", "token_rows_2")  # checkpoint names of each text encoder's rows


class TrainingError(LcdError):
    """Training cannot go on (NaN loss, missing optional dependency)."""


@dataclass
class TrainResult:
    concept: Concept
    losses: list[dict] = field(default_factory=list)
    resumed_from: int = 0


def _init_rows(tokenizer, text_encoder, spec: ConceptSpec) -> torch.Tensor:
    """Mean embedding of the init word's tokens, (D,) float32."""
    word = (spec.init_word or spec.class_word).strip()
    ids = tokenizer(word, add_special_tokens=False).input_ids
    if not word or not ids:
        raise LcdError(f"{spec.photos}: init word {word!r} for {spec.token} gives no tokens", item=spec.photos)
    w = text_encoder.get_input_embeddings().weight
    return w[ids].detach().float().mean(0)


def check_config(cfg: TrainConfig, device: torch.device) -> None:
    """Fail before any work on choices this machine cannot run."""
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise TrainingError("use_8bit_adam needs bitsandbytes, which is not installed: pip install 'lcdiffusion[8bit]'", item="use_8bit_adam") from None
    if cfg.mixed_precision == "fp16" and device.type != "cuda":
        raise TrainingError(f"mixed_precision fp16 needs a CUDA device, got {device}", item="mixed_precision")


def _optimizer(cfg: TrainConfig, unet_params: list, rows: list[torch.nn.Parameter]):
    groups = [{"params": list(rows), "lr": cfg.token_lr or cfg.lr, "weight_decay": 0.0}]
    if unet_params:
        groups.insert(0, {"params": unet_params, "lr": cfg.lr, "weight_decay": cfg.weight_decay})
    kw = dict(betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps)
    if cfg.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, **kw)
    return torch.optim.AdamW(groups, **kw)


@dataclass
class _Run:
    """The state of one training run: the model's trainable tensors, optimizer, RNGs, losses."""

    pipe: object
    cfg: TrainConfig
    specs: Sequence[ConceptSpec]
    examples: list  # per concept, list[data.Example] at training size
    prior: list  # data.Example at training size
    ids_t: list[torch.Tensor]  # the concept tokens' ids, per text encoder
    rows: list[torch.nn.Parameter]  # their embedding rows (n, D_e), per text encoder
    names: list[str]  # trainable UNet parameter names
    params: dict
    opt: torch.optim.Optimizer
    gen: torch.Generator
    rng: np.random.Generator
    fp: str  # checkpoint fingerprint of the config, specs and prior size
    work: Path | None
    losses: list[dict] = field(default_factory=list)
    start: int = 0

    @property
    def ckpt_root(self) -> Path | None:
        return self.work / "checkpoints" if self.work is not None else None

    @property
    def unet_params(self) -> list:
        return [self.params[n] for n in self.names]

    @property
    def token_rows(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(ids (n,), rows (n, D_e))] per text encoder, as lcd.concepts.family.encode_prompts takes them."""
        return list(zip(self.ids_t, self.rows))

    def trainable(self) -> dict[str, torch.Tensor]:
        """Every trained tensor by checkpoint name."""
        return dict(zip(ROW_KEYS, self.rows)) | {f"unet.{n}": self.params[n] for n in self.names}


def train_concepts(
    lp: LoadedPipeline,
    specs: Sequence[ConceptSpec],
    cfg: TrainConfig,
    *,
    work_dir: str | Path | None = None,
    resume: bool = False,
    prior_examples: Sequence[data.Example] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune `lp.pipe` in place on one or more concepts; return the learned Concept.

    work_dir (optional) receives checkpoints/, losses.csv/json, validation/ and cached class
    images; `resume=True` continues from its newest checkpoint exactly (same weights, optimizer,
    RNG states and step as an uninterrupted run). `prior_examples` overrides `cfg.reg_dir`.
    """
    work = Path(work_dir) if work_dir is not None else None
    # 1. check inputs before touching the model; 2. the prior images
    examples, prior = _inputs(lp, specs, cfg, work, prior_examples)
    # 3. tokens and trainable tensors
    run = _setup(lp.pipe, cfg, specs, examples, prior, work)
    # 4. resume
    if resume:
        _resume(run)
    # 5. the loop
    _loop(run, on_step)
    if work is not None:
        ck.write_loss_curve(work, run.losses)
    # 6. the learned concept
    concept = _concept(lp.pipe, cfg, specs, examples, run.rows, run.names, run.params, lp, run.losses)
    return TrainResult(concept, run.losses, run.start)


def _inputs(lp, specs, cfg, work, prior_examples) -> tuple[list, list]:
    """Checks, then (per-concept photos, prior images) at training size. The prior is given, a
    regularization set, or class images generated with the base model (cached in `work`)."""
    pipe = lp.pipe
    check_config(cfg, pipe.unet.device)
    if not specs:
        raise LcdError("no concept given to train", item="concepts")
    tokens = [s.token for s in specs]
    if len(set(tokens)) != len(tokens):
        raise LcdError(f"concept tokens must be distinct, got {tokens}", item="token")
    for s in specs:
        for tok, _ in family_of(pipe).text_encoders(pipe):
            check_token(s.token, tok, s.photos)
    check_resolution(cfg.resolution, latent_factor(pipe.vae))
    examples = [data.load_concept_photos(s.photos, s.token, s.class_word, cfg.template,
                                         min_photos=cfg.min_photos, min_px=cfg.min_photo_px) for s in specs]
    prior: list[data.Example] = []
    if cfg.prior and cfg.prior_weight > 0:
        if prior_examples is not None:
            prior = list(prior_examples)
        elif cfg.reg_dir:
            prior = data.load_reg_set(cfg.reg_dir, cfg.class_template.format(class_word=specs[0].class_word))
        else:
            prior = _class_images(lp, specs, cfg, work)
    return [data.at_size(ex, cfg.resolution) for ex in examples], data.at_size(prior, cfg.resolution)


def check_resolution(resolution: int, factor: int) -> None:
    if resolution % factor:
        raise LcdError(f"train.resolution {resolution} is not a multiple of this model's latent factor {factor}",
                       item="resolution")


def _setup(pipe, cfg, specs, examples, prior, work) -> _Run:
    """New tokens added (initialised from their init words), the trainable UNet tensors chosen
    (K/V, cross-attention or LoRA), everything else frozen; optimizer and RNGs seeded."""
    ids_t, rows = [], []
    encoders = family_of(pipe).text_encoders(pipe)
    for tok, te in encoders:  # SDXL: the token gets a row in both encoders, each from its own init word
        init = torch.stack([_init_rows(tok, te, s) for s in specs])
        ids_t.append(torch.tensor(add_tokens(tok, te, [s.token for s in specs], init, "concepts"), device=te.device))
        rows.append(torch.nn.Parameter(init.clone().to(te.device)))
        te.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    names = add_lora(pipe.unet, cfg.lora_rank, cfg.lora_alpha, cfg.seed) if cfg.method == "lora" \
        else freeze_except(pipe.unet, cfg.method)
    params = dict(pipe.unet.named_parameters())
    if cfg.gradient_checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for _, te in encoders:
            te.gradient_checkpointing_enable()
    fp = ck.fingerprint({"cfg": cfg.model_dump(), "specs": [s.model_dump() for s in specs], "n_prior": len(prior)})
    return _Run(pipe, cfg, specs, examples, prior, ids_t, rows, names, params,
                _optimizer(cfg, [params[n] for n in names], rows), torch.Generator("cpu").manual_seed(cfg.seed),
                np.random.default_rng(cfg.seed), fp, work)


def _resume(run: _Run) -> None:
    """Continue from the newest checkpoint: weights, optimizer, both RNGs, losses and step."""
    if run.ckpt_root is None or not ck.list_checkpoints(run.ckpt_root):
        return
    tensors, opt_state, gen_state, state = ck.load_checkpoint(ck.list_checkpoints(run.ckpt_root)[-1], run.fp)
    with torch.no_grad():
        for key, rows in zip(ROW_KEYS, run.rows):
            rows.copy_(tensors.pop(key))
        for n in run.names:
            run.params[n].copy_(tensors[f"unet.{n}"])
    run.opt.load_state_dict(opt_state)
    run.gen.set_state(gen_state)
    run.rng.bit_generator.state = state["np_rng"]
    run.losses, run.start = state["losses"], state["step"]


def _loop(run: _Run, on_step: Callable[[int, float], None] | None) -> None:
    """Steps start..cfg.steps, with checkpoints, validation images and a progress bar."""
    cfg, pipe = run.cfg, run.pipe
    dev = pipe.unet.device
    autocast = None
    if cfg.mixed_precision != "no":
        autocast = torch.autocast(dev.type, dtype=torch.bfloat16 if cfg.mixed_precision == "bf16" else torch.float16)
    was_training = pipe.unet.training
    pipe.unet.train()
    bar = _progress(cfg, run.start)
    root = run.ckpt_root
    last_good = ck.list_checkpoints(root)[-1] if root is not None and ck.list_checkpoints(root) else None
    try:
        for step in range(run.start, cfg.steps):
            rec = _step(run, step, autocast, last_good)
            if bar is not None:
                bar.advance(1, f"loss {rec['loss']:.4f}")
            if on_step is not None:
                on_step(step + 1, rec["loss"])
            done = step + 1
            if root is not None and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                last_good = ck.save_checkpoint(root, done, run.trainable(), run.opt, run.gen, run.rng.bit_generator.state,
                                               run.losses, run.fp, cfg.keep_checkpoints)
                ck.write_loss_curve(run.work, run.losses)
            if run.work is not None and cfg.validate_every and done % cfg.validate_every == 0:
                _validate(pipe, cfg, run.specs, run.work / "validation" / f"step-{done:06d}.png")
    finally:
        if bar is not None:
            bar.close()
        pipe.unet.train(was_training)


def _step(run: _Run, step: int, autocast, last_good) -> dict:
    """One optimizer step over cfg.grad_accum micro-batches; a non-finite loss stops training."""
    cfg, pipe = run.cfg, run.pipe
    inst_sum = prior_sum = 0.0
    for _ in range(cfg.grad_accum):
        inst_l, prior_l = _micro_step(pipe, cfg, run.examples, run.prior, run.rng, run.gen, run.token_rows, autocast)
        loss = inst_l + cfg.prior_weight * prior_l if run.prior else inst_l
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss is {loss.item()} at step {step + 1}; stopping. Last good checkpoint: "
                f"{last_good or 'none'} (lower lr or use mixed_precision 'no')",
                item=f"step {step + 1}",
            )
        (loss / cfg.grad_accum).backward()
        inst_sum += inst_l.item() / cfg.grad_accum
        prior_sum += (prior_l.item() if run.prior else 0.0) / cfg.grad_accum
    torch.nn.utils.clip_grad_norm_(run.unet_params + run.rows, cfg.max_grad_norm)
    run.opt.step()
    run.opt.zero_grad(set_to_none=True)
    with torch.no_grad():  # keep the pipeline usable (validation, in-memory edits) at every step
        for (_, te), ids, rows in zip(family_of(pipe).text_encoders(pipe), run.ids_t, run.rows):
            te.get_input_embeddings().weight[ids] = rows.to(te.dtype)
    rec = {"step": step + 1, "loss": inst_sum + cfg.prior_weight * prior_sum, "instance_loss": inst_sum,
           "prior_loss": prior_sum}
    run.losses.append(rec)
    return rec


def _micro_step(pipe, cfg, examples, prior, rng, gen, token_rows, autocast):
    f = latent_factor(pipe.vae)
    per = [cfg.batch_size // len(examples) + (i < cfg.batch_size % len(examples)) for i in range(len(examples))]
    imgs, masks, caps, tids = [], [], [], []
    for ex, n in zip(examples, per):
        if n:
            i, m, c, t = data.sample_batch(ex, n, cfg.resolution, rng, augmented=cfg.augment,
                                           scale_range=cfg.scale_range, flip_p=cfg.flip_p, factor=f)
            imgs.append(i), masks.append(m), caps.extend(c), tids.append(t)
    n_inst = len(caps)
    if prior:
        i, m, c, t = data.sample_batch(prior, cfg.batch_size, cfg.resolution, rng, augmented=False,
                                       flip_p=cfg.flip_p, factor=f)
        imgs.append(i), masks.append(m), caps.extend(c), tids.append(t)
    per_ex = batch_loss(pipe, np.concatenate(imgs), np.concatenate(masks), caps, np.concatenate(tids), token_rows,
                        gen, autocast)
    inst = per_ex[:n_inst].mean()
    pri = per_ex[n_inst:].mean() if prior else torch.zeros(())
    return inst, pri


def _class_images(lp, specs, cfg, work):
    import hashlib

    out = []
    for s in specs:
        prompt = cfg.class_template.format(class_word=s.class_word)
        key = hashlib.sha256(f"{lp.source.sha256 or lp.source.revision}|{prompt}|{cfg.resolution}|"
                             f"{cfg.class_image_steps}|{cfg.class_image_guidance}|{cfg.seed}".encode()).hexdigest()[:12]
        # without a work dir the images live in a temp folder for this run only
        cache = (work if work is not None else Path(tempfile.mkdtemp(prefix="lcd-class-"))) / "class_images" / key
        out += data.generate_class_images(lp.pipe, prompt, cfg.num_class_images, cache, steps=cfg.class_image_steps,
                                          guidance=cfg.class_image_guidance, size=cfg.resolution, seed=cfg.seed)
    return out


def _progress(cfg, start) -> Progress | None:
    """Progress lines for the steps still to run (a resumed run counts from its checkpoint)."""
    return Progress(f"train (from step {start})" if start else "train", cfg.steps - start, unit="steps") \
        if cfg.progress else None


@torch.no_grad()
def _validate(pipe, cfg, specs, path):
    from lcd.io.images import save_png

    prompt = cfg.validation_prompt.format(token=specs[0].token, class_word=specs[0].class_word)
    g = torch.Generator("cpu").manual_seed(cfg.seed)
    img = pipe(prompt, num_inference_steps=cfg.validation_steps, height=cfg.resolution, width=cfg.resolution,
               generator=g, output_type="np").images[0]
    save_png(path, (img * 255).round().astype(np.uint8), {"prompt": prompt, "seed": cfg.seed})


def _concept(pipe, cfg, specs, examples, rows, names, params, lp, losses) -> Concept:
    if cfg.method == "lora":
        unet = {}
        for n, p in params.items():
            if "lora_A" in n or "lora_B" in n:  # '<module>.lora_A.default.weight'
                mod, kind = n.split(".lora_")[0], "lora_A" if "lora_A" in n else "lora_B"
                unet[f"{mod.removesuffix('.base_layer')}.{kind}"] = p.detach().float().cpu().clone()
        scale = (cfg.lora_alpha or cfg.lora_rank) / cfg.lora_rank
    else:
        unet = {n: params[n].detach().cpu().clone() for n in names}
        scale = 1.0
    card = {
        "base": lp.source.to_dict(),
        "class_words": [s.class_word for s in specs],
        "init_words": [s.init_word or s.class_word for s in specs],
        "config": cfg.model_dump(),
        "steps": len(losses),
        "final_loss": losses[-1]["loss"] if losses else None,
        "photos": [{"file": e.name, "sha256": e.sha256} for ex in examples for e in ex],
        "lcd_version": lcd.__version__,
    }
    emb = [r.detach().float().cpu().clone() for r in rows]
    return Concept([s.token for s in specs], emb[0], cfg.method, unet, scale, card, embeddings_2=emb[1] if len(emb) > 1
                   else None)
