"""Fixtures of tools/probe_hardening.py: the case record, the micro artifacts it builds,
and the file tamperings its cases share."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


PY = sys.executable


SCREDGE = str(Path(PY).parent / "scredge")  # the installed entry point


# API cases: a ScredgeError is the clean outcome (printed, exit 2); anything else shows
# its traceback
API = ("import sys, textwrap\nfrom scredge.errors import ScredgeError\ntry:\n"
       "    exec(compile(textwrap.dedent(sys.argv[1]), 'case', 'exec'))\n"
       "except ScredgeError as exc:\n    print('API error:', exc, file=sys.stderr)\n"
       "    sys.exit(2)\n")


TIMEOUT = 60


@dataclass
class Case:
    name: str
    cls: int
    argv: list[str]  # a command: ["scredge", ...] or ["py", code]
    expect: str = "error"  # "error" or "ok"
    setup: object = None  # callable(work) run before
    check: object = None  # callable(work) -> problem str or None (lost files)
    parallel: object = None  # callable(work, proc) run while the command runs
    ok_test: object = None  # callable(stdout) -> problem str or None for expect "ok"
    timeout: int = TIMEOUT
    env: dict = field(default_factory=dict)


def rehash(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        target = folder / name
        if target.is_file() and not target.is_symlink():
            data = target.read_bytes()
            entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (folder / "manifest.json").write_text(json.dumps(manifest))


def list_files(folder: Path, *names: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in names:
        manifest["files"][name] = {"sha256": "0" * 64, "bytes": 0}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    rehash(folder)


def build(work: Path) -> None:
    """base: a micro artifact with a BPE tokenizer and chat template (vocab 512)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from scredge.config import SCRConfig
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    config = SCRConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                       d_ff=64, window=16, scr_layers=(0, 1))
    (work / "micro.json").write_text(json.dumps(config.to_dict()))
    base = work / "base"
    if not base.exists():
        export_artifact(build_model(config, seed=1, gamma=0.5, std=0.08), base)
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(
            ["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 50],
            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False))
        tok.save(str(base / "tokenizer.json"))
        (base / "tokenizer_config.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>"}))
        (base / "chat_template.jinja").write_text(
            "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")
        list_files(base, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    hf = work / "hf"
    if not hf.exists():
        hf.mkdir()
        (hf / "config.json").write_text(json.dumps(HF_CONFIG))
        write_safetensors(hf / "model.safetensors", {"x": ("F32", [2], b"\0" * 8)})


HF_CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 512,
             "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "intermediate_size": 64, "rms_norm_eps": 1e-5}


def write_safetensors(path: Path, tensors: dict, header_len: int | None = None,
                      truncate: int | None = None) -> None:
    header, data, offset = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    raw_header = json.dumps(header).encode()
    blob = struct.pack("<Q", header_len or len(raw_header)) + raw_header + data
    path.write_bytes(blob[:truncate] if truncate else blob)


def art(work: Path, name: str) -> Path:
    """A fresh copy of the base artifact."""
    dst = work / "cases" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(work / "base", dst, symlinks=True)
    return dst


def hf_folder(work: Path, name: str, config: dict | None = None) -> Path:
    dst = work / "cases" / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(work / "hf", dst)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _golden_case(work: Path, name: str, shape=None, ids_value=None) -> None:
    """A recorded golden file whose step0.ids array is rewritten (header lies, or ids
    out of range), the manifest rehashed so only the content is wrong."""
    import io
    import zipfile

    import numpy as np

    src = work / "golden_base"
    if not src.exists():
        tmp = art(work, "golden_tmp")
        subprocess.run([SCREDGE, "parity", str(tmp), "--record",
                        "--backend", "ort"], cwd=work, capture_output=True, timeout=600)
        shutil.copytree(tmp, src)
    folder = work / "cases" / name
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(src, folder)
    path = folder / "parity" / "golden.npz"
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    ids = np.load(io.BytesIO(members["step0.ids.npy"]))
    if ids_value is not None:
        ids = ids.copy()
        ids.flat[0] = ids_value
        buf = io.BytesIO()
        np.save(buf, ids)
        members["step0.ids.npy"] = buf.getvalue()
    else:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<i8", "fortran_order": False,
                                                   "shape": shape})
        members["step0.ids.npy"] = np.lib.format.magic(1, 0) + buf.getvalue() + ids.tobytes()
    with zipfile.ZipFile(path, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    rehash(folder)


def _donor(work: Path) -> None:
    """Another valid artifact's graph: the base one with its weights zeroed (same shape)."""
    donor = work / "cases" / "g_donor"
    if donor.exists():
        return
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shutil.copytree(work / "base", donor)
    model = onnx.load(str(donor / "model.onnx"))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(np.zeros_like(arr), init.name))
    onnx.save(model, str(donor / "model.onnx"))



def gen(folder: str, *extra: str) -> list[str]:
    return ["scredge", "generate", folder, "--max-new-tokens", "2", "--greedy", *extra]


def _file_case(name: str, cls: int, folder_edit, argv_of, expect="error") -> Case:
    def setup(work, name=name):
        folder = art(work, name)
        folder_edit(folder)

    return Case(name, cls, argv_of(f"cases/{name}"), expect, setup)


def _json_edit(file: str, edit, relist: bool = True):
    def apply(folder: Path):
        path = folder / file
        data = json.loads(path.read_text())
        path.write_text(json.dumps(edit(data)))
        rehash(folder)
    return apply


def _messages_case(name: str, content: bytes | str) -> Case:
    def setup(work, name=name, content=content):
        path = work / "cases" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("link:"):
            path.unlink(missing_ok=True)
            path.symlink_to(content[5:])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return Case(f"--messages {name}", 2,
                ["scredge", "generate", "base", "--max-new-tokens", "2", "--greedy",
                 "--messages", f"cases/{name}.json"], "error", setup)


def _big_template(folder: Path) -> None:
    (folder / "chat_template.jinja").write_text("x" * (20 << 20))
    rehash(folder)


def _weights_case(name: str, writer) -> Case:
    def setup(work, name=name):
        folder = hf_folder(work, f"st_{name}")
        writer(folder / "model.safetensors")

    return Case(f"safetensors {name}", 3, ["scredge", "export", "--from-llama",
                                          f"cases/st_{name}", "--out", f"cases/out_{name}"],
                "error", setup)


def _index_case(work: Path) -> None:
    folder = hf_folder(work, "st_index")
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "../../micro.json"}}))


def _export_to(work: Path, out: str, *extra: str) -> list[str]:
    return ["scredge", "export", "--config", "micro.json", "--out", out, *extra]


# the hostile chat templates (class 1): one list, shared with the tests
sys.path.insert(0, str(ROOT / "tests"))
from hostile_templates import HOSTILE as TEMPLATES  # noqa: E402,F401 - tests/ is no package
