"""`scredge info` (versions, backends, presets) and `scredge init` (a seeded checkpoint)."""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import scredge
from scredge.cli.common import add_model_source, config_from_args
from scredge.config import PRESETS
from scredge.deps import installed_versions


def add(sub) -> None:
    p = sub.add_parser("info", help="versions, installed backends and presets")
    p.add_argument("folder", nargs="?", type=Path,
                   help="an artifact folder: also say its precision and graphs")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_info)

    p = sub.add_parser("init", help="write a seeded reference checkpoint (needs the ref extra)")
    add_model_source(p)
    p.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    p.add_argument("--gamma", type=float, default=0.1,
                   help="initial SCR scale; 0 makes SCR an exact identity (default 0.1)")
    p.add_argument("--out", required=True, help="checkpoint path, ending in .safetensors")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run_init)


def run_info(args: argparse.Namespace) -> int:
    report = {
        "scredge": scredge.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "modules": installed_versions(),
        "presets": {name: cfg.to_dict() for name, cfg in PRESETS.items()},
    }
    report["realign_kernel"] = _realign_kernel(report["modules"])
    if args.folder is not None:
        from scredge.runtime.loaders import artifact_summary

        report["artifact"] = artifact_summary(args.folder)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"scredge {report['scredge']} on Python {report['python']} ({report['machine']})")
    if "artifact" in report:
        a = report["artifact"]
        print(f"artifact {a['folder']}: {a['precision']}; graphs {a['graphs']}")
        if a["ort_fused"]:
            print("  onnxruntime form, fused kernels: " + ", ".join(
                f"{k} {v}" for k, v in a["ort_fused"].items()))
        if a["calibration"]:
            c = a["calibration"]
            print(f"  calibrated on {c['file']}: {c['tokens']} tokens ({c['tokenizer']}), "
                  f"sha256 {c['sha256'][:12]}...")
    for mod, ver in report["modules"].items():
        print(f"  {mod:<13} {ver or 'not installed'}")
    print(f"scr.Realign on onnxruntime (CPU): {report['realign_kernel']['describe']}")
    print("presets: " + ", ".join(PRESETS))
    return 0


def _realign_kernel(modules: dict) -> dict:
    """What onnxruntime would run for scr.Realign on the CPU: the custom-op kernel library
    (where built and probed) or the function body, and why."""
    if not modules.get("onnxruntime"):
        return {"kind": "none", "describe": "onnxruntime not installed"}
    from scredge.errors import ScredgeError
    from scredge.runtime.realign_kernel import pick

    try:
        kernel = pick("cpu")
    except ScredgeError as exc:  # e.g. SCREDGE_REALIGN_KERNEL=custom-op without a library
        return {"kind": "error", "describe": str(exc).splitlines()[0]}
    return {"kind": kernel.kind, "library": str(kernel.library or ""), "reason": kernel.reason,
            "describe": kernel.describe()}


def run_init(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from scredge.ref import init_checkpoint

    out, config_path, n = init_checkpoint(config, args.out, args.seed, args.gamma, args.force)
    print(f"wrote {out} ({n:,} parameters, seed {args.seed}) and {config_path}")
    return 0
