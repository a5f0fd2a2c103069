"""Supervised fine-tuning with the loss on answer tokens only, memory-lean, on one device or many.

Launch:
  needlework train --model smollm2 --data train.jsonl --eval dev.jsonl --out runs/sft
  accelerate launch --num_processes 8 -m needlework.cli train ...   # DDP (plain multi-GPU config)
  torchrun --nproc_per_node 8 -m needlework.cli train ...           # DDP
  accelerate launch --num_processes 8 --use_fsdp --fsdp_version 2 -m needlework.cli train ...  # FSDP2
  ACCELERATE_USE_FSDP=true FSDP_VERSION=2 torchrun --nproc_per_node 8 -m needlework.cli train ...  # the same

Under FSDP every process keeps a shard of each parameter, gradient and optimizer state (FSDP2,
`fully_shard`: accelerate's `fsdp_version: 2`; FSDP1 is refused, DeepSpeed too). Decoder layers are
their own FSDP units unless the accelerate config names another wrap policy. Checkpoints and the final
adapter/model are gathered to rank 0 and written unsharded, in the same format as one process writes,
so they resume or load anywhere (even with another number of processes). Keep `--gradient-checkpointing`
(transformers' non-reentrant one) rather than accelerate's `fsdp_activation_checkpointing`, which does
not restore the RNG for dropout. accelerate turns FSDP on for GPUs only: on CPU processes it runs DDP.

`train` reads as a table of contents (torchtune's recipe shape): `SFTRecipe.setup` composes the
`_setup_*` steps (processes, model and what trains, data, optimizer and schedule, resume), then
`SFTRecipe.train` runs one loop (micro-steps, clip, step, log, evaluate, save) and `save` writes
the final weights.
One optimizer step consumes `grad_accum × world_size` micro-batches of a fixed plan, so the global
batch (and the loss) does not depend on how many processes share it.

Snapshots (`TrainConfig.snapshots`): at those fractions of the steps the weights are written as the
final save writes them (one `_write_weights`), to OUT/snapshots/<fraction>/, for early head probes.
`on_snapshot(model, tokenizer, fraction, folder)`, when given (one process only), runs right after
each snapshot is in place, on the model in memory in eval mode, with the RNG states restored after
it: a study scores the snapshot's heads there instead of loading it again. Its time, like saving,
is left out of the training seconds and logged (`probe_seconds`).
`stop_at` trains only up to a fraction of the steps (the schedule still spans them all) and
checkpoints there, so a later call with a larger `stop_at` continues exactly: a study trains a set
in such segments when its stop_early gates may stop it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import resource
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from needlework.artifacts import TrainRun
from needlework.data.records import Record
from needlework.data.render import resolve_chat
from needlework.errors import NeedleworkError
from needlework.io import write_json
from needlework.models.batching import is_oom
from needlework.models.load import (
    MODEL_SETTINGS,
    ModelConfig,
    apply_adapter,
    check_rendering,
    context_settings,
    load_model,
    resolve_model_config,
)
from needlework.train.checkpoint import (
    full_model_state,
    full_optimizer_state,
    full_trainable_state,
    list_checkpoints,
    load_checkpoint,
    rank_rng_states,
    save_checkpoint,
    trainable_state,
)
from needlework.train.checkpointing import enable_checkpointing
from needlework.train.config import TrainConfig, snapshot_step
from needlework.train.data import Example, collate, encode_all, epoch_plan
from needlework.train.loss import AnswerOnlyLM, base_causal_lm

log = logging.getLogger(__name__)

OnSnapshot = Callable[[Any, Any, float, Path], None]  # (model, tokenizer, fraction, snapshot folder)

__all__ = ["SFTRecipe", "TrainResult", "check_distributed", "evaluate_answers", "peak_mem_gb", "setup_trainable", "train"]


@dataclass
class TrainResult:
    out_dir: Path
    steps: int  # optimizer steps done in total (incl. before a resume)
    final_loss: float  # answer-token loss of the last step
    saved: Path | None  # out/adapter (LoRA) or out/model (attn/full); None when stopped at a fraction (`stop_at`)
    log_path: Path
    eval: dict[str, float] = field(default_factory=dict)  # last evaluation, when eval records were given


def peak_mem_gb(device: torch.device) -> float:
    """Peak memory in GiB: torch.cuda.max_memory_allocated on GPU; on CPU the process's peak RSS
    (ru_maxrss, which counts everything the process ever held, not only tensors)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def setup_trainable(model, cfg: TrainConfig, adapter: str | None = None):
    """Apply the training method: LoRA adapters (new, or continued from `adapter`), attention-only
    or full fine-tuning. Returns the model to train (a PeftModel for LoRA).

    Raises NeedleworkError: targets that match no module, or an adapter that does not fit the model.
    """
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        if cfg.gradient_checkpointing:
            model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
        if adapter:  # continue training it: loaded as every stage loads adapters, but trainable
            return apply_adapter(model, adapter, trainable=True)
        try:
            lora = LoraConfig(
                r=cfg.lora_r,
                lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.targets),
                task_type="CAUSAL_LM",
            )
            return get_peft_model(model, lora)
        except (RuntimeError, ValueError, KeyError) as e:
            raise NeedleworkError(
                f"LoRA targets {cfg.targets} do not fit the model ({str(e).splitlines()[0][:300]})",
                "use targets that name its linear layers (e.g. q_proj)",
            ) from None
    if adapter:
        raise NeedleworkError("an adapter was given for a non-LoRA training method", "use --method lora, or drop --adapter")
    for name, p in model.named_parameters():
        p.requires_grad_(cfg.method == "full" or name.split(".")[-2] in cfg.targets)
    if not any(p.requires_grad for p in model.parameters()):
        raise NeedleworkError(
            f"targets {cfg.targets} match no parameter of the model", "name its attention projections, e.g. q_proj,k_proj,v_proj,o_proj"
        )
    return model


@torch.no_grad()
def evaluate_answers(
    lm: AnswerOnlyLM,
    examples: list[Example],
    batch_size: int,
    device,
    pad_id: int,
    rank: int = 0,
    world: int = 1,
    reduce=None,
    lockstep: bool = False,
) -> dict[str, float]:
    """Teacher-forced answer metrics: mean NLL per answer token, token accuracy, and exact match
    (every answer token is the argmax). Examples are sharded over processes and the sums reduced.
    `lockstep` (FSDP: every forward all-gathers weights, so all ranks must run the same number):
    a rank with fewer examples runs padding batches whose results it drops."""
    was_training = lm.training
    lm.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # nll, correct tokens, tokens, exact examples
    mine = examples[rank::world]
    n_batches = math.ceil((math.ceil(len(examples) / world) if lockstep else len(mine)) / batch_size)
    for i in range(n_batches):
        chunk = mine[i * batch_size : (i + 1) * batch_size]
        b = collate([[e] for e in chunk or examples[:1]], pad_id).to(device)
        nll, pred = lm(b.input_ids, b.position_ids, b.rows, b.pos, b.targets)
        if not chunk:
            continue  # a padding batch (lockstep)
        wrong = torch.zeros(b.input_ids.shape[0], device=device).index_add_(0, b.rows, (pred != b.targets).float())
        sums += torch.tensor(
            [nll.sum().item(), (pred == b.targets).sum().item(), b.n_answer, (wrong == 0).sum().item()], dtype=torch.float64, device=device
        )
    if reduce is not None:
        sums = reduce(sums)
    lm.train(was_training)
    nll, correct, n_tok, exact = sums.tolist()
    return {"eval_loss": nll / max(n_tok, 1), "eval_token_acc": correct / max(n_tok, 1), "eval_exact": exact / max(len(examples), 1)}


def check_distributed(acc, cfg: TrainConfig) -> bool:
    """Whether the model is sharded (FSDP2), after refusing the set-ups whose checkpoints or
    numerics this trainer cannot get right. Returns True under FSDP2, False under DDP or one process.

    Raises NeedleworkError: DeepSpeed, FSDP1, or FSDP's own activation checkpointing with dropout.
    """
    kind = acc.distributed_type.name
    if kind == "DEEPSPEED":
        # ZeRO keeps weights and optimizer state in DeepSpeed's own partitioned layout, which these
        # checkpoint gathers do not read, and DeepSpeed's own checkpoints are pickles it reloads with
        # torch.load(weights_only=False) (deepspeedai/DeepSpeed#8500), which needlework never does.
        # FSDP2 shards the same things (as ZeRO-3 does) with safetensors checkpoints.
        raise NeedleworkError(
            "training under DeepSpeed is not supported (ZeRO's partitioned state would give incomplete "
            "checkpoints, and its own checkpoints need unsafe pickle loading)",
            "launch with FSDP2 (accelerate launch --use_fsdp --fsdp_version 2 ...), which shards "
            "weights, gradients and optimizer state like ZeRO-3, or plain DDP (torchrun)",
        )
    if kind != "FSDP":
        if kind == "MULTI_CPU" and os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" and acc.is_main_process:
            warnings.warn(
                "accelerate enables FSDP on GPUs only: these CPU processes train with DDP (same results, unsharded)", stacklevel=2
            )
        return False
    if not acc.is_fsdp2:
        raise NeedleworkError(
            "training under FSDP1 (fsdp_version 1) is not supported: LoRA needs FSDP2's per-parameter sharding",
            "use FSDP2: accelerate launch --use_fsdp --fsdp_version 2, or `fsdp_version: 2` in the accelerate config",
        )
    plugin = acc.state.fsdp_plugin
    if plugin.activation_checkpointing and cfg.lora_dropout > 0:
        raise NeedleworkError(
            "FSDP activation checkpointing recomputes dropout with a different mask (it does not keep the RNG state)",
            "turn off fsdp_activation_checkpointing and keep --gradient-checkpointing (the default)",
        )
    if plugin.auto_wrap_policy is None and "FSDP_AUTO_WRAP_POLICY" not in os.environ:
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

        plugin.auto_wrap_policy = transformer_auto_wrap_policy  # per decoder layer: one layer gathered at a time
    return True


class SFTRecipe:
    """One training run, read top to bottom: `setup` composes the `_setup_*` steps (processes,
    model, data, optimizer, resume), `train` is the loop, `save` writes the final weights.
    `train()` below calls them in order; the state they share lives on the instance."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        out_dir: str | os.PathLike,
        stop_at: float = 1.0,
        on_snapshot: OnSnapshot | None = None,
    ) -> None:
        if not 0 < stop_at <= 1:
            raise NeedleworkError(f"stop_at must be a fraction of training in (0, 1], not {stop_at}", "pass e.g. 0.25 (1: the whole run)")
        self.model_cfg = resolve_model_config(model_cfg)  # an adapter to continue: checked, its settings applied
        self.cfg = cfg
        self.stop_at = stop_at
        self.on_snapshot = on_snapshot
        self.out = Path(out_dir)
        self.ckpt_root = self.out / TrainRun.CHECKPOINTS
        self.log_path = self.out / TrainRun.LOG

    def setup(self, train_records: list[Record], eval_records: list[Record] | None) -> None:
        """Everything before the first step; the order is the RNG order (seed, LoRA init, data)."""
        self._setup_processes()
        self._setup_model()
        self._setup_data(train_records, eval_records)
        self._setup_optimizer()
        self._write_resolved_config()
        self._setup_resume()

    # --- setup steps ----------------------------------------------------------------------------

    def _setup_processes(self) -> None:
        """Processes, device, seed. Under several processes each uses its accelerate device."""
        from accelerate import Accelerator
        from transformers import set_seed

        tracker = None if self.cfg.report_to == "none" else self.cfg.report_to
        self.acc = Accelerator(cpu=self.model_cfg.device == "cpu", log_with=tracker, project_dir=self.out / TrainRun.TRACKING)
        self.world, self.rank, self.main = self.acc.num_processes, self.acc.process_index, self.acc.is_main_process
        if self.on_snapshot is not None and self.world > 1:
            raise NeedleworkError(
                "on_snapshot runs on the model of one process, not of several", "score the snapshots after training instead"
            )
        self.device = self.acc.device
        self.sharded = check_distributed(self.acc, self.cfg)  # FSDP2: gather checkpoints collectively; eval in lockstep
        set_seed(self.cfg.seed)

    def _setup_model(self) -> None:
        """The model, loaded per process on its device; train mode, no KV cache, what trains chosen."""
        model, self.tok = load_model(dataclasses.replace(self.model_cfg, device=str(self.device), adapter=None))
        self.context = context_settings(model.config)  # the RoPE settings in effect, saved with the weights
        cfg = self.cfg = dataclasses.replace(self.cfg, chat=resolve_chat(self.cfg.chat, self.tok))  # auto: the template when there is one
        if self.main:
            check_rendering(self.model_cfg, cfg.chat, "trained further")  # continuing an adapter/fine-tune: same rendering?
        model.config.use_cache = False
        if cfg.gradient_checkpointing and not (self.sharded and self.acc.state.fsdp_plugin.activation_checkpointing):
            enable_checkpointing(model, "save-attention" if cfg.save_attention else "full")
        self.model = setup_trainable(model, cfg, adapter=self.model_cfg.adapter)
        self.model.train()
        self.n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.max_length = cfg.max_length or int(getattr(base_causal_lm(self.model).config, "max_position_embeddings", 0) or 0)
        tok = self.tok
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    def _setup_data(self, train_records: list[Record], eval_records: list[Record] | None) -> None:
        """Examples rendered once; the plan of micro-batches is a pure function of (seed, epoch)."""
        cfg = self.cfg
        self.examples = encode_all(
            train_records, self.tok, self.max_length, cfg.chat, cfg.truncate_haystack, progress=self.main and cfg.progress
        )
        self.eval_examples = encode_all(eval_records, self.tok, self.max_length, cfg.chat, cfg.truncate_haystack) if eval_records else []
        self.pack_length = cfg.pack_length or self.max_length
        if cfg.packing and not self.pack_length:
            raise NeedleworkError("packing needs a row length", "set --pack-length or --max-length")
        self.plans: dict[int, list] = {}
        self.per_step = cfg.grad_accum * self.world  # micro-batches per optimizer step, over all processes
        # rows per forward pass: the step's rows regrouped (`_passes`); auto starts with all of them
        rows_in_step = cfg.batch_size * cfg.grad_accum
        self.auto_rows = cfg.rows_per_pass == "auto" and self.world == 1 and self.device.type == "cuda"
        fixed = cfg.batch_size if cfg.rows_per_pass in (0, "auto") else cfg.rows_per_pass
        self.rows = rows_in_step if self.auto_rows else (cfg.batch_size if self.world > 1 else fixed)
        micro_per_epoch = len(epoch_plan(self.examples, 0, cfg.seed, cfg.batch_size, cfg.packing, self.pack_length))
        self.total_steps = cfg.max_steps if cfg.max_steps > 0 else max(1, int(cfg.epochs * micro_per_epoch) // self.per_step)
        self.snapshot_at = cfg.snapshot_steps(self.total_steps)  # step -> fractions saved there
        self.stop_step = snapshot_step(self.stop_at, self.total_steps)

    def _setup_optimizer(self) -> None:
        """Optimizer and schedule; accelerate wraps the model (DDP), or shards it and swaps the
        optimizer's parameters for the shards (FSDP2 needs both at once)."""
        from transformers import get_scheduler

        cfg = self.cfg
        lm = AnswerOnlyLM(self.model)
        self.optimizer = torch.optim.AdamW(
            [p for p in lm.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        if self.sharded:
            lm._no_split_modules = getattr(base_causal_lm(self.model), "_no_split_modules", None)  # decoder layers: FSDP units
            lm = self.acc.prepare(lm, self.optimizer)[0]  # `optimizer` now holds the sharded parameters (DTensors)
        else:
            lm = self.acc.prepare_model(lm)
        self.lm = lm
        self.params = [p for p in lm.parameters() if p.requires_grad]
        warmup = cfg.warmup_steps or int(cfg.warmup_ratio * self.total_steps)
        self.scheduler = get_scheduler(cfg.schedule, self.optimizer, num_warmup_steps=warmup, num_training_steps=self.total_steps)

    def _write_resolved_config(self) -> None:
        """out/train_config.json: the settings as resolved (also stored in every checkpoint)."""
        self.resolved = {
            "train": self.cfg.to_dict(),
            "model": dataclasses.asdict(self.model_cfg),
            "world_size": self.world,
            "distributed": "FSDP2" if self.sharded else ("DDP" if self.world > 1 else "none"),
            "n_train": len(self.examples),
            "n_eval": len(self.eval_examples),
            "total_steps": self.total_steps,
            "n_trainable_params": self.n_trainable,
            "max_length": self.max_length,
        }
        if self.main:
            write_json(self.out / TrainRun.CONFIG, self.resolved)
        if self.cfg.report_to != "none":  # trackers take flat scalars (TensorBoard's hparams)
            flat = {k: v for k, v in self.cfg.to_dict().items() if isinstance(v, (str, int, float, bool))}
            self.acc.init_trackers("needlework", config={**flat, "model": self.model_cfg.name, "n_train": len(self.examples)})

    def _setup_resume(self) -> None:
        """Resume from an explicit directory, or the newest checkpoint in out/checkpoints."""
        cfg, ckpt = self.cfg, None
        if cfg.resume not in ("auto", "never"):
            ckpt = Path(cfg.resume)
        elif cfg.resume == "auto" and list_checkpoints(self.ckpt_root):
            ckpt = list_checkpoints(self.ckpt_root)[-1]
        self.inner = self.acc.unwrap_model(self.lm).model  # the (peft) causal LM; checkpoint names are relative to it
        self.start_step = 0
        if ckpt is not None:
            self.start_step = int(load_checkpoint(ckpt, self.inner, self.optimizer, self.scheduler, sharded=self.sharded)["step"])
        if self.main:
            lines = self.log_path.read_text().splitlines() if self.log_path.exists() and self.start_step else []
            kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= self.start_step]
            self.log_path.write_text("".join(ln + "\n" for ln in kept))  # drop lines a crashed run wrote after its checkpoint
        # training seconds so far (a resumed run adds to them); time spent saving snapshots is left out
        self.seconds_before = TrainRun(self.out).seconds()["train"] if self.main and self.start_step else 0.0
        self.paused = 0.0

    # --- helpers of the loop --------------------------------------------------------------------

    def _micro_batch(self, i: int) -> list:
        """The i-th micro-batch of the endless stream over epochs."""
        cfg, epoch, j = self.cfg, 0, i
        while True:
            if epoch not in self.plans:
                self.plans[epoch] = epoch_plan(self.examples, epoch, cfg.seed, cfg.batch_size, cfg.packing, self.pack_length)
            if j < len(self.plans[epoch]):
                return self.plans[epoch][j]
            j -= len(self.plans[epoch])
            epoch += 1

    def _log(self, row: dict[str, Any]) -> None:
        if self.main:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.cfg.report_to != "none":  # accelerate logs on the main process only
            self.acc.log({k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float))}, step=row["step"])

    def _reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return self.acc.reduce(t, reduction="sum") if self.world > 1 else t

    def _evaluate(self) -> dict[str, float]:
        return evaluate_answers(
            self.acc.unwrap_model(self.lm),
            self.eval_examples,
            self.cfg.batch_size,
            self.device,
            self.pad_id,
            self.rank,
            self.world,
            self._reduce_sum,
            lockstep=self.sharded,
        )

    def _checkpoint(self, step: int) -> dict[str, torch.Tensor]:
        """Write out/checkpoints/step-N; every rank calls it. Returns the trainable weights (rank 0)."""
        acc, inner = self.acc, self.inner
        acc.wait_for_everyone()
        rng = rank_rng_states()  # collective when several processes run
        # under FSDP the gathers are collective (rank 0 receives the full tensors); else rank 0 reads its copy
        weights = full_trainable_state(inner) if self.sharded else (trainable_state(inner) if self.main else {})
        optim = full_optimizer_state(inner, self.optimizer) if self.sharded else None
        if self.main:
            save_checkpoint(
                self.ckpt_root,
                step,
                weights,
                self.optimizer,
                self.scheduler,
                self.resolved,
                keep=self.cfg.keep_checkpoints,
                optimizer_state=optim,
                rng_states=rng,
            )
        acc.wait_for_everyone()
        return weights

    def _passes(self, group: list) -> list[list]:
        """This process's rows of one step, in order, cut into forward passes of `rows` rows."""
        rows = [row for a in range(self.cfg.grad_accum) for row in group[a * self.world + self.rank]]
        return [rows[i : i + self.rows] for i in range(0, len(rows), self.rows)]

    def _accumulate(self, group: list, n_answer: int) -> tuple[float, int]:
        """Forward and backward over this process's rows of one step, `rows` at a time. Returns
        the step's answer-token loss (reduced over processes) and the tokens this process read.
        With `rows_per_pass: auto` an out-of-memory error halves the rows and redoes the step."""
        while True:
            try:
                return self._accumulate_passes(self._passes(group), n_answer)
            except RuntimeError as e:  # torch.cuda.OutOfMemoryError is one
                if not (self.auto_rows and is_oom(e)) or self.rows == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.rows //= 2
                log.info("train: out of GPU memory; %d rows per pass from now on", self.rows)

    def _accumulate_passes(self, passes: list[list], n_answer: int) -> tuple[float, int]:
        acc, world = self.acc, self.world
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        for a, rows in enumerate(passes):
            batch = collate(rows, self.pad_id, packed=self.cfg.packing).to(self.device)
            sync = acc.no_sync(self.lm) if (a < len(passes) - 1 and world > 1) else contextlib.nullcontext()
            with sync:
                nll, _ = self.lm(batch.input_ids, batch.position_ids, batch.rows, batch.pos, batch.targets)
                # DDP averages gradients over processes, so scale by world: the result is sum / n_answer
                acc.backward(nll.sum() * (world / n_answer))
            loss_sum += nll.detach().sum().double()
            tokens += sum(len(e.input_ids) for row in rows for e in row)
        return float(self._reduce_sum(loss_sum)) / n_answer, tokens

    def _stop_if_non_finite(self, loss: float, step: int) -> None:
        if not math.isfinite(loss):
            good = list_checkpoints(self.ckpt_root)
            raise NeedleworkError(
                f"the training loss became {loss} at step {step + 1}; training stopped"
                + (f" (last good checkpoint: {good[-1]})" if good else " (no checkpoint was written yet)"),
                "lower --lr, raise --warmup-steps, keep --max-grad-norm on, or use float32/bfloat16 instead of float16",
            )

    def _log_step(self, done: int, loss: float, n_answer: int) -> None:
        """One log line: loss, learning rate, throughput since the last line, memory, training seconds."""
        now = time.perf_counter()
        t_last, tokens = self._since
        tok_s = float(self._reduce_sum(torch.tensor(float(tokens), device=self.device))) / max(now - t_last, 1e-9)
        row = {"step": done, "loss": loss, "lr": self.scheduler.get_last_lr()[0], "tokens_per_s": tok_s}
        row |= {"peak_mem_gb": peak_mem_gb(self.device), "answer_tokens": n_answer}
        self._log({**row, "train_seconds": self.seconds_before + now - self._t_loop - self.paused})
        self._since = (now, 0)

    def _write_weights(self, dest: Path, weights: dict[str, torch.Tensor] | None = None) -> None:
        """The trained weights as a loadable folder, a peft adapter (LoRA) or a full model, with the
        model settings beside them: the final save and every snapshot. Every rank calls it (under
        FSDP the weights are gathered to rank 0; `weights`: the trainable ones, already gathered)."""
        cfg, inner, lora = self.cfg, self.inner, self.cfg.method == "lora"
        if self.sharded and lora and weights is None:
            weights = full_trainable_state(inner)  # collective
        full = full_model_state(base_causal_lm(inner)) if self.sharded and not lora else None  # collective
        if self.main:
            if lora:
                inner.save_pretrained(dest, safe_serialization=True, **({"state_dict": weights} if self.sharded else {}))
            else:
                base_causal_lm(inner).save_pretrained(dest, safe_serialization=True, **({"state_dict": full} if self.sharded else {}))
                self.tok.save_pretrained(dest)
            # the base model, its RoPE settings and the rendering travel with the weights: every command
            # that loads them applies the same theta (models.load.resolve_model_config) and warns on
            # another rendering (models.load.check_rendering)
            write_json(
                dest / MODEL_SETTINGS,
                {**dataclasses.asdict(dataclasses.replace(self.model_cfg, adapter=None)), **self.context, "chat": cfg.chat},
            )

    def _save_snapshots(self, step: int) -> None:
        """OUT/snapshots/<fraction>/ for the fractions that fall on this step: the weights, then
        SNAPSHOT_INFO, under a temporary name renamed into place, so a snapshot is complete or absent.
        Saved before any checkpoint of the same step: a resumed run has every snapshot up to its
        checkpoint and rewrites the later ones (identical, as the resume is exact). Every rank calls it."""
        t0 = time.perf_counter()
        run = TrainRun(self.out)
        for f in self.snapshot_at[step]:
            t_f, final = time.perf_counter(), run.snapshot_dir(f)
            tmp = final.with_name(f".{final.name}.tmp")
            if self.main:
                shutil.rmtree(tmp, ignore_errors=True)
            self._write_weights(tmp)
            if self.main:
                info = {"fraction": f, "step": step, "total_steps": self.total_steps, "save_seconds": time.perf_counter() - t_f}
                write_json(tmp / TrainRun.SNAPSHOT_INFO, info)
                shutil.rmtree(final, ignore_errors=True)
                os.replace(tmp, final)
        self.acc.wait_for_everyone()
        saved = time.perf_counter() - t0
        row = {"step": step, "snapshot": self.snapshot_at[step], "snapshot_seconds": saved}
        if self.on_snapshot is not None:
            row["probe_seconds"] = self._probe_snapshots(step)
        self._log(row)
        spent = time.perf_counter() - t0
        self.paused += spent
        self._since = (self._since[0] + spent, self._since[1])  # throughput counts training time only

    def _probe_snapshots(self, step: int) -> float:
        """`on_snapshot` on each snapshot of this step, on the model in memory (eval mode, no
        gradients); the training RNG states are restored after it, so that probing never changes
        the run. Returns the seconds it took."""
        t0 = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            try:
                self.inner.eval()
                for f in self.snapshot_at[step]:
                    self.on_snapshot(self.inner, self.tok, f, TrainRun(self.out).snapshot_dir(f))
            finally:
                self.inner.train()
        return time.perf_counter() - t0

    # --- the loop -------------------------------------------------------------------------------

    def train(self) -> None:
        """Micro-steps, clip, step, log, snapshot, evaluate, checkpoint; one step consumes `per_step`
        micro-batches. With `stop_at` < 1 the loop ends at `stop_step` and checkpoints there."""
        from tqdm.auto import tqdm

        cfg, total, stop = self.cfg, self.total_steps, self.stop_step
        bar = tqdm(total=total, initial=self.start_step, desc="train", disable=not (self.main and cfg.progress))
        self.last_loss, self.last_eval = float("nan"), {}
        self._t_loop = time.perf_counter()
        self._since = (self._t_loop, 0)  # time and tokens since the last log line
        for step in range(self.start_step, stop):
            group = [self._micro_batch(step * self.per_step + k) for k in range(self.per_step)]  # the same list everywhere
            n_answer = sum(len(e.input_ids) - e.prompt_len for mb in group for row in mb for e in row)
            loss, tokens = self._accumulate(group, n_answer)
            self._since = (self._since[0], self._since[1] + tokens)
            self._stop_if_non_finite(loss, step)
            if cfg.max_grad_norm > 0:
                self.acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.last_loss = loss
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            if done % cfg.log_every == 0 or done in (total, stop):
                self._log_step(done, loss, n_answer)
            if done in self.snapshot_at:
                self._save_snapshots(done)
            if self.eval_examples and ((cfg.eval_every and done % cfg.eval_every == 0) or done == total):
                self.last_eval = self._evaluate()
                self._log({"step": done, **self.last_eval})
            if (cfg.save_every and done % cfg.save_every == 0 and done < total) or done == stop < total:
                self._checkpoint(done)  # a stopped run resumes from its checkpoint at `stop`
        bar.close()
        if self.eval_examples and not self.last_eval and stop == total:  # resumed at the end: still report the metrics
            self.last_eval = self._evaluate()

    # --- final weights --------------------------------------------------------------------------

    def save(self) -> TrainResult:
        """A peft adapter folder, or a full model folder, with the model settings beside it; nothing
        when the run stopped at a fraction (`stop_at`: its checkpoint is where a later run goes on)."""
        if self.stop_step < self.total_steps:
            return TrainResult(self.out, self.stop_step, self.last_loss, None, self.log_path, self.last_eval)
        saved = self.out / (TrainRun.ADAPTER if self.cfg.method == "lora" else TrainRun.MODEL)
        # checkpoint first: under FSDP its gather gives the adapter's full weights; the model gathers whole
        weights = self._checkpoint(self.total_steps)
        self._write_weights(saved, weights)
        self.acc.wait_for_everyone()
        return TrainResult(
            out_dir=self.out, steps=self.total_steps, final_loss=self.last_loss, saved=saved, log_path=self.log_path, eval=self.last_eval
        )


def train(
    model_cfg: ModelConfig | str,
    train_records: list[Record],
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    eval_records: list[Record] | None = None,
    stop_at: float = 1.0,
    on_snapshot: OnSnapshot | None = None,
) -> TrainResult:
    """Fine-tune a causal LM on records, the loss on answer tokens only.

    Args:
        model_cfg: the base model (name, dtype, device, rope_theta, max_position_embeddings, adapter
            to continue training). Under several processes each uses its accelerate device.
        train_records / eval_records: needlework records; eval metrics are teacher-forced.
        cfg: TrainConfig. out_dir: receives log.jsonl, train_config.json, checkpoints/, adapter/ or model/,
            and snapshots/<fraction>/ (`cfg.snapshots`).
        stop_at: train up to this fraction of the steps and checkpoint there, without a final save
            (the learning-rate schedule still spans every step); a later call with the same config,
            `out_dir` and a larger `stop_at` continues exactly where it stopped.
        on_snapshot: called as `on_snapshot(model, tokenizer, fraction, folder)` after each snapshot
            is saved, on the model in memory (one process only; see the module docstring).
    Returns:
        TrainResult.
    Raises:
        NeedleworkError: bad data (no answer, too long), a non-finite loss (the last good checkpoint is
            kept), a checkpoint or adapter that does not match the model.
    """
    recipe = SFTRecipe(ModelConfig(name=model_cfg) if isinstance(model_cfg, str) else model_cfg, cfg, out_dir, stop_at, on_snapshot)
    recipe.setup(train_records, eval_records)
    try:
        recipe.train()
        return recipe.save()
    finally:
        if cfg.report_to != "none":
            recipe.acc.end_training()  # flush and close the tracker
