"""The checkpoint of a `scredge train` run (`out_dir/last.pt`): the whole training state
(weights, optimizer, step, both RNG states, both configs, the log), written atomically, and
read back for `--resume` only when the run it continues is the same run."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from scredge.config import SCRConfig
from scredge.destination import atomic_write
from scredge.errors import ScredgeError
from scredge.ref.train_config import TRAJECTORY_FIELDS, TrainConfig

STATE_FORMAT = "scredge-train-state/1"


def save_state(path: Path, model, optimizer, rng, step: int, cfg: TrainConfig,
                log: dict) -> None:
    state = {"format": STATE_FORMAT, "step": step, "model": model.state_dict(),
             "optimizer": optimizer.state_dict(), "numpy_rng": rng.bit_generator.state,
             "torch_rng": torch.get_rng_state(), "train_config": asdict(cfg),
             "model_config": model.config.to_dict(), "log": log}
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def restore_state(path: Path, model, optimizer, rng, model_config: SCRConfig, cfg: TrainConfig,
             data_ids: dict, device: str, fresh: dict) -> tuple[int, dict]:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is unusable
        raise ScredgeError("cannot read the training checkpoint", received=f"{path}: {exc}",
                           fix="delete it and start again without --resume") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ScredgeError("not a scredge training checkpoint", received=str(path),
                           expected=f"format {STATE_FORMAT}")
    saved_model = SCRConfig.from_dict(state["model_config"], source=f"{path} model config")
    if saved_model != model_config:
        a, b = saved_model.to_dict(), model_config.to_dict()
        diff = [k for k in a if a[k] != b[k]]
        raise ScredgeError(
            "cannot resume: the checkpoint was trained with another model config",
            received=f"checkpoint {path}: " + ", ".join(f"{k}={a[k]}" for k in diff)
                     + f" (full: {json.dumps(a)})",
            expected="this command's config: " + ", ".join(f"{k}={b[k]}" for k in diff)
                     + f" (full: {json.dumps(b)})",
            fix="resume with the same --preset/--config, --scr-layers and --window, "
                "or choose another --out")
    saved_cfg = state["train_config"]
    diff = [k for k in TRAJECTORY_FIELDS if saved_cfg.get(k) != getattr(cfg, k)]
    if diff:
        raise ScredgeError(
            "cannot resume: training settings differ from the checkpoint's",
            received="checkpoint: " + ", ".join(f"{k}={saved_cfg.get(k)}" for k in diff),
            expected="this command: " + ", ".join(f"{k}={getattr(cfg, k)}" for k in diff),
            fix="resume with the checkpoint's settings (see its train_log.json), "
                "or choose another --out")
    for key, flag in (("init", "--init"), ("trainable", "--trainable")):
        saved = state["log"].get(key, "all" if key == "trainable" else None)
        if saved != fresh[key]:
            raise ScredgeError(f"cannot resume: {flag} differs from the checkpoint's",
                               received=f"this command: {json.dumps(fresh[key])}",
                               expected=f"checkpoint: {json.dumps(saved)}",
                               fix=f"resume with the run's own {flag}, or choose another --out")
    saved_data = state["log"]["data"]
    if any(saved_data[k] != data_ids[k] for k in ("train_sha256", "val_sha256")):
        raise ScredgeError("cannot resume: the training data differs from the checkpoint's",
                           received=f"train sha256 {data_ids['train_sha256'][:12]}..., "
                                    f"{data_ids['train_bytes']} bytes",
                           expected=f"train sha256 {saved_data['train_sha256'][:12]}..., "
                                    f"{saved_data['train_bytes']} bytes",
                           fix="resume with the same --data/--corpus and --val-fraction")
    model.load_state_dict(state["model"], strict=True)
    optimizer.load_state_dict(state["optimizer"])
    rng.bit_generator.state = state["numpy_rng"]
    torch.set_rng_state(state["torch_rng"].cpu())
    return int(state["step"]), state["log"]
