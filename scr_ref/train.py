"""Byte-level language-model training of the reference model (`scredge train`).

Small and deterministic on purpose, so a result can be rerun and a run resumed:

- Batches are random windows of `seq_len + 1` bytes (input and shifted target) drawn by
  a seeded numpy Generator whose state is checkpointed; validation uses fixed, evenly
  spaced windows of the validation bytes, so every evaluation sees the same bytes.
- AdamW with linear warmup and cosine decay to `min_lr`, global-norm gradient clipping.
  Weight decay applies to matrices (projections, MLP, SCR `proj`, the tied embedding)
  and not to vectors: norm gains (decay pulls them to 0, not to their neutral 1),
  biases, the SCR score heads and the SCR scale gamma (decay would push SCR towards
  the identity and bias an SCR-vs-baseline comparison).
- `out_dir/last.pt` (train_state.py) holds the whole training state (weights, optimizer,
  step, both RNG states, both configs, the log) and is replaced atomically; on CPU a run
  resumed from it ends with bit-identical weights to one that was never interrupted.
- The result is `out_dir/model.safetensors` (SCR_SPEC names, via `save_checkpoint`) and
  `out_dir/train_log.json` (evaluations, final validation loss, wall time, command).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scredge.config import SCRConfig
from scredge.contract import TOKENIZER_FILES, TOKENIZER_KEY, WEIGHTS_FILE
from scredge.destination import FolderLock, atomic_write
from scredge.errors import ScredgeError
from scredge.ref.checkpoint import save_checkpoint
from scredge.ref.corpus import sha256
from scredge.ref.model import SCRForCausalLM, build_model
from scredge.ref.train_config import TrainConfig, is_int
from scredge.ref.train_init import InitSource, check_trainable, freeze
from scredge.ref.train_memory import available_memory, check_memory, estimate_memory
from scredge.ref.train_state import restore_state, save_state

__all__ = ["TrainConfig", "TrainResult", "available_memory", "check_memory", "estimate_memory",
           "make_optimizer", "train", "val_windows"]

STATE_FILE = "last.pt"
MODEL_FILE = WEIGHTS_FILE  # the name `scredge export --weights` and an artifact use
LOG_FILE = "train_log.json"
ADAM_BETAS = (0.9, 0.95)


# ---- data -----------------------------------------------------------------------------
def _as_array(data: bytes | np.ndarray, name: str, seq_len: int) -> np.ndarray:
    """Bytes (a byte-level model) or token ids (a tokenizer's, from train_init.encode)."""
    unit = "bytes" if isinstance(data, bytes) else "tokens"
    if len(data) < seq_len + 1:
        raise ScredgeError(f"{name} data is shorter than one training window",
                           received=f"{len(data)} {unit}", expected=f">= seq_len + 1 = "
                           f"{seq_len + 1} {unit}", fix="use more text or a smaller --seq-len")
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=np.uint8)
    return np.asarray(data, dtype=np.int64)


def _data_sha(data: bytes | np.ndarray) -> str:
    return sha256(data if isinstance(data, bytes) else np.asarray(data, "<i8").tobytes())


def sample_batch(data: np.ndarray, rng: np.random.Generator, batch: int,
                 seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs [B,T] and next-byte targets [B,T], int64."""
    starts = rng.integers(0, len(data) - seq_len, size=batch)  # window = seq_len + 1 bytes
    windows = np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]


def val_windows(data: np.ndarray, n: int, seq_len: int) -> torch.Tensor:
    """`n` evenly spaced windows of seq_len + 1 bytes covering the data, [n, T+1] int64."""
    starts = np.linspace(0, len(data) - seq_len - 1, n).round().astype(np.int64)
    return torch.from_numpy(np.stack([data[s : s + seq_len + 1] for s in starts]).astype(np.int64))


# ---- optimizer ----------------------------------------------------------------------------
def make_optimizer(model: SCRForCausalLM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad (`--trainable`: a frozen one gets no
    state and no decay); weight decay on matrices only (see the module docstring)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=ADAM_BETAS)


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic torch algorithms for the run, restoring the caller's setting after."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


# ---- training -------------------------------------------------------------------------
@dataclass
class TrainResult:
    model: SCRForCausalLM  # in eval mode, on the training device
    log: dict  # what train_log.json holds
    finished: bool  # False when stopped early by `stop_at`


def train(
    model_config: SCRConfig,
    cfg: TrainConfig,
    data_train: bytes,
    data_val: bytes,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
    stop_at: int | None = None,
    ignore_memory_check: bool = False,
    meta: dict | None = None,
    init: InitSource | None = None,
    trainable: str = "all",
) -> TrainResult:
    """Train a seeded model on bytes; checkpoint to, resume from and write into `out_dir`.

    `stop_at`: write the checkpoint after this step and return unfinished (as if
    interrupted); resume later with `resume=True`. `meta` (JSON-able: the command,
    where the data came from) is stored in the log. `init` (train_init.resolve_init): start
    from its weights, not seeded ones, and keep its tokenizer in `out_dir` (the data is then
    its token ids); `trainable` 'scr' trains only the SCR parameters.
    """
    say = progress or (lambda line: None)
    out_dir = Path(out_dir)
    state_path = out_dir / STATE_FILE
    train_arr = _as_array(data_train, "training", cfg.seq_len)
    val_arr = _as_array(data_val, "validation", cfg.seq_len)
    est = _check_inputs(model_config, cfg, (train_arr, val_arr), out_dir, resume=resume,
                        stop_at=stop_at, device=device, ignore_memory_check=ignore_memory_check,
                        init=init, trainable=trainable)
    _make_out_dir(out_dir)
    data_ids = {"train_sha256": _data_sha(data_train), "val_sha256": _data_sha(data_val),
                "train_bytes": len(data_train), "val_bytes": len(data_val),
                "units": "bytes" if isinstance(data_train, bytes) else "tokens"}
    tokenizer = init.tokenizer if init is not None else None

    with _deterministic(), FolderLock(out_dir) as lock:  # one run per folder
        model = _initial_model(model_config, cfg.seed, init, device, trainable)
        optimizer = make_optimizer(model, cfg)
        rng = np.random.default_rng(cfg.seed)
        log = _new_log(model_config, cfg, data_ids, meta, est, trainable, init, device)
        step = 0
        if resume:
            step, log = restore_state(state_path, model, optimizer, rng, model_config, cfg,
                                 data_ids, device, log)
            log["meta"] = meta or log["meta"]
            log["train_config"] = asdict(cfg)  # cadence fields may change on resume
            say(f"resumed {state_path} at step {step}/{cfg.steps}")
        if tokenizer is not None:  # the run keeps the tokenizer its data was encoded with
            tokenizer.copy_into(out_dir)
        log["runs"].append({"start_step": step, "resumed": resume,
                            "threads": torch.get_num_threads(),
                            "command": (meta or {}).get("command")})
        val = val_windows(val_arr, cfg.eval_batches * cfg.batch_size, cfg.seq_len).to(device)
        run = _Run(model, optimizer, rng, cfg, log, out_dir, say, device, val,
                   positions=torch.arange(cfg.seq_len, device=device).expand(cfg.batch_size, -1),
                   wall_before=log["wall_time_s"], t0=time.perf_counter(), lock=lock)
        if step == 0:
            _first_evaluation(run, model_config.vocab_size, est)
        model.train()
        while step < cfg.steps:
            step, loss_value, lr = _train_step(run, train_arr, step)
            _report(run, step, loss_value, lr)
            stopping = stop_at is not None and step >= stop_at and step < cfg.steps
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                log["wall_time_s"] = run.wall()
                log["tokens_per_s"] = run.tokens_per_s()
                lock.check()  # still the folder this run started in
                save_state(state_path, model, optimizer, rng, step, cfg, log)
            if stopping:
                log["status"] = "stopped"
                _write_json(out_dir / LOG_FILE, log)
                say(f"stopped after step {step}: resume with --resume")
                return TrainResult(model.eval(), log, finished=False)
        return _finish(run)


def _check_inputs(model_config: SCRConfig, cfg: TrainConfig, arrays: tuple[np.ndarray, ...],
                  out_dir: Path, *, resume: bool, stop_at: int | None, device: str,
                  ignore_memory_check: bool, init: InitSource | None, trainable: str) -> dict:
    """Refuse a run that cannot start, before anything is allocated or written; the
    memory estimate (train_memory.estimate_memory's dict)."""
    _check_run(out_dir, resume, stop_at, device)
    check_trainable(trainable, model_config, init)
    if init is not None and init.config != model_config:
        raise ScredgeError("the model config differs from the --init model's",
                           received=model_config.to_dict(), expected=init.config.to_dict())
    for arr in arrays:
        _check_ids(arr, model_config.vocab_size)
    return (estimate_memory(model_config, cfg, trainable) if ignore_memory_check
            else check_memory(model_config, cfg, available_memory(device), trainable))


def _make_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a parent is a file, or not writable
        raise ScredgeError("cannot create the --out folder", received=f"{out_dir}: {exc}",
                           fix="choose a writable --out") from exc


def _initial_model(model_config: SCRConfig, seed: int, init: InitSource | None, device: str,
                   trainable: str) -> SCRForCausalLM:
    """The seeded model (or `init`'s weights) on `device`, frozen as `trainable` says."""
    torch.manual_seed(seed)
    if init is None:
        model = build_model(model_config, seed)
    else:
        model = SCRForCausalLM(model_config)
        model.load_state_dict(init.state, strict=True)
    model = model.to(device)
    freeze(model, trainable)
    return model


def _new_log(model_config: SCRConfig, cfg: TrainConfig, data_ids: dict, meta: dict | None,
             est: dict, trainable: str, init: InitSource | None, device: str) -> dict:
    """A new run's log (what train_log.json holds), before any step."""
    tokenizer = init.tokenizer if init is not None else None
    return {"status": "running", "model_config": model_config.to_dict(),
            "train_config": asdict(cfg), "data": data_ids, "meta": meta or {},
            "parameters": est["parameters"], "memory_estimate_bytes": est["total"],
            "trained_parameters": est["trained_parameters"], "trainable": trainable,
            "init": init.description if init is not None else None,
            TOKENIZER_KEY: tokenizer.describe() if tokenizer is not None else None,
            "device": device, "torch": str(torch.__version__), "evals": [], "losses": [],
            "wall_time_s": 0.0, "runs": []}


@dataclass
class _Run:
    """One training run's loop state: what the steps read and update."""
    model: SCRForCausalLM
    optimizer: torch.optim.AdamW
    rng: np.random.Generator
    cfg: TrainConfig
    log: dict
    out_dir: Path
    say: Callable[[str], None]
    device: str
    val: torch.Tensor  # the fixed validation windows
    positions: torch.Tensor
    wall_before: float  # wall time of the runs before this one (resume)
    t0: float
    compute_s: float = 0.0
    steps_here: int = 0
    window_losses: list[float] = field(default_factory=list)
    lock: FolderLock | None = None  # the run's folder, checked before each write

    def evaluate(self) -> float:
        return validation_loss(self.model, self.val, self.positions, self.cfg.batch_size,
                               self.cfg.seq_len)

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.t0

    def tokens_per_s(self) -> float:
        return self.steps_here * self.cfg.tokens_per_step / self.compute_s


def _first_evaluation(run: _Run, vocab: int, est: dict) -> None:
    cfg = run.cfg
    v = run.evaluate()
    run.log["evals"].append({"step": 0, "val_loss": v, "wall_time_s": run.wall()})
    run.say(f"step 0/{cfg.steps} | val loss {v:.4f} (uniform: ln {vocab} = "
            f"{math.log(vocab):.4f}) | {est['parameters']:,} parameters "
            f"({est['trained_parameters']:,} trained), {cfg.tokens_per_step:,} tokens/step")


def _train_step(run: _Run, train_arr: np.ndarray, step: int) -> tuple[int, float, float]:
    """One optimizer step on a fresh batch: (the new step, its loss, its learning rate)."""
    cfg, device = run.cfg, run.device
    s0 = time.perf_counter()
    lr = cfg.lr_at(step)
    x, y = sample_batch(train_arr, run.rng, cfg.batch_size, cfg.seq_len)
    loss_value = optimizer_step(run.model, run.optimizer, cfg, lr, x.to(device), y.to(device),
                                run.positions, step + 1)
    step += 1
    run.steps_here += 1
    run.compute_s += time.perf_counter() - s0
    run.window_losses.append(loss_value)
    return step, loss_value, lr


def _report(run: _Run, step: int, loss_value: float, lr: float) -> None:
    """Log the mean loss every `log_every` steps and evaluate every `eval_every`."""
    cfg, log = run.cfg, run.log
    line = None
    if step % cfg.log_every == 0 or step == cfg.steps:
        mean = sum(run.window_losses) / len(run.window_losses)
        log["losses"].append({"step": step, "loss": mean, "lr": lr})
        run.window_losses = []
        eta = (run.wall() - run.wall_before) / run.steps_here * (cfg.steps - step)
        line = (f"step {step}/{cfg.steps} | loss {mean:.4f} | lr {lr:.2e} | "
                f"{run.tokens_per_s():,.0f} tok/s | "
                f"elapsed {_clock(run.wall())} | eta {_clock(eta)}")
    if step % cfg.eval_every == 0 or step == cfg.steps:
        v = run.evaluate()
        log["evals"].append({"step": step, "val_loss": v, "train_loss": loss_value,
                             "lr": lr, "wall_time_s": run.wall()})
        line = (line or f"step {step}/{cfg.steps}") + f" | val loss {v:.4f}"
    if line:
        run.say(line)


def _finish(run: _Run) -> TrainResult:
    """Write the finished run's weights and log."""
    log = run.log
    log["wall_time_s"] = run.wall()
    if run.steps_here:
        log["tokens_per_s"] = run.tokens_per_s()
    log["final_val_loss"] = log["evals"][-1]["val_loss"]
    log["status"] = "finished"
    run.lock.check()
    save_checkpoint(run.model, run.out_dir / MODEL_FILE)
    _write_json(run.out_dir / LOG_FILE, log)
    return TrainResult(run.model.eval(), log, finished=True)


def _check_run(out_dir: Path, resume: bool, stop_at: int | None, device: str) -> None:
    """Refuse a run that cannot start, before anything is allocated or written."""
    state_path = out_dir / STATE_FILE
    _check_run_folder(out_dir)
    if stop_at is not None and not (is_int(stop_at) and 1 <= stop_at):
        raise ScredgeError("invalid stop step", received=stop_at, expected="an integer >= 1")
    if resume and not state_path.is_file():
        raise ScredgeError("nothing to resume", received=f"no {STATE_FILE} in {out_dir}",
                           fix="drop --resume to start a new run, or point --out at a run")
    if not resume and state_path.exists():
        raise ScredgeError("the output folder already holds a training run",
                           received=str(state_path),
                           fix="pass --resume to continue it, or choose another --out")
    if device != "cpu" and not device.startswith("cuda"):
        raise ScredgeError("unknown training device", received=repr(device),
                           expected="cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ScredgeError("CUDA device requested but torch sees no GPU", received=device,
                           expected="cpu, or a machine with CUDA", fix="pass --device cpu")


RUN_FILES = (STATE_FILE, MODEL_FILE, LOG_FILE, *TOKENIZER_FILES)


def _check_run_folder(out_dir: Path) -> None:
    """A run folder is a run folder: --out is a new or empty folder, or one holding only a
    run's own files (and atomic_write's leftovers), never a file, an artifact or a folder
    of other things, whose `model.safetensors` a run would overwrite."""
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise ScredgeError("--out exists and is not a folder", received=str(out_dir),
                           expected="a new or empty folder, or a training run's folder",
                           fix="choose another --out")
    if not out_dir.exists():
        return
    try:
        others = sorted(p.name for p in out_dir.iterdir()
                        if p.name not in RUN_FILES and not p.name.startswith(".tmp-"))
    except OSError as exc:
        raise ScredgeError("cannot read the --out folder", received=f"{out_dir}: {exc}",
                           fix="choose another --out") from exc
    if others:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        raise ScredgeError("--out is not a training run's folder", received=f"{out_dir} holds "
                           f"{shown}", expected=f"a new or empty folder, or one holding only "
                           f"{', '.join(RUN_FILES)}",
                           fix="choose a new --out (an artifact folder is written by "
                               "`scredge export --weights RUN/model.safetensors`)")


def optimizer_step(model, optimizer, cfg: TrainConfig, lr: float, x, y, positions,
                   step: int) -> float:
    """One AdamW step on a batch (x -> y, [B, seq_len]) at learning rate `lr`; the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    logits, _ = model(x, positions)
    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise ScredgeError("training diverged: the loss is not finite",
                           received=f"loss {loss_value} at step {step}",
                           fix="lower --lr or keep --grad-clip on; resume from the "
                               "last checkpoint with other settings in a new --out")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss_value


def validation_loss(model, val, positions, batch_size: int, seq_len: int) -> float:
    """Mean next-byte cross-entropy (nats) over the fixed validation windows."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for chunk in val.split(batch_size):
            logits, _ = model(chunk[:, :-1], positions[: len(chunk)])
            total += F.cross_entropy(logits.flatten(0, 1), chunk[:, 1:].flatten(),
                                     reduction="sum").item()
    model.train()
    return total / (val.shape[0] * seq_len)


# ---- small helpers -------------------------------------------------------------------
def _check_ids(data: np.ndarray, vocab_size: int) -> None:
    top = int(data.max()) if len(data) else 0
    if top >= vocab_size:
        raise ScredgeError("the data holds ids outside the model's vocabulary",
                           received=f"id {top}", expected=f"ids < vocab_size = {vocab_size}",
                           fix="train with the model's own tokenizer (--init)")


def _write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"

