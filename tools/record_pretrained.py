"""Ship a `scredge train` run as a pretrained checkpoint: scr_ref/pretrained/<name>.*

    python tools/record_pretrained.py RUN_DIR NAME

Copies RUN_DIR/model.safetensors and writes <name>.json: its sha256, the exact training
command (from train_log.json), the settings that command resolved to, the data's sha256,
the final validation loss and the curve, time and machine. `scredge.ref.pretrained`
refuses the file when it no longer matches this record.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "scr_ref" / "pretrained"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__)
        return 2
    run, name = Path(argv[0]), argv[1]
    log = json.loads((run / "train_log.json").read_text())
    if log.get("status") != "finished":
        print(f"{run} has not finished training (status {log.get('status')!r})")
        return 1
    from scredge.artifact import sha256_file
    from scredge.cli import build_parser

    command = log["meta"]["command"]
    parsed = build_parser().parse_args(command[1:])  # what the command resolved to
    FOLDER.mkdir(parents=True, exist_ok=True)
    target = FOLDER / f"{name}.safetensors"
    shutil.copyfile(run / "model.safetensors", target)
    os.chmod(target, 0o644)
    record = {
        "file": target.name,
        "sha256": sha256_file(target),
        "command": command,
        "final_val_loss": log["final_val_loss"],
        "val_fraction": parsed.val_fraction,
        "train_config": log["train_config"],
        "model_config": log["model_config"],
        "data": log["data"] | {"source": log["meta"].get("data")},
        "parameters": log["parameters"],
        "evals": [{k: e[k] for k in ("step", "val_loss") if k in e} for e in log["evals"]],
        "wall_time_s": round(log["wall_time_s"], 1),
        "tokens_per_s": round(log["tokens_per_s"]),
        "trained_on": {"date": str(date.today()), "machine": platform.machine(),
                       "cpus": os.cpu_count(), "torch": log["torch"],
                       "python": platform.python_version()},
    }
    (FOLDER / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {target} and {name}.json: val loss {record['final_val_loss']:.4f}, "
          f"sha256 {record['sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
