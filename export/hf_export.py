"""A scredge checkpoint back to a folder `transformers` loads (`scredge export-hf`).

The base model (embeddings, blocks, norm, head) already carries the Hugging Face Llama
tensor names (SCR_SPEC section 1), so its tensors go unchanged into `model.safetensors`
beside a `config.json` of the family the config needs: Llama (full attention, no biases),
Mistral (a sliding window) or Qwen2 (q/k/v biases, with or without a window). transformers
has no SCR layer, so the SCR tensors go into their own file (contract.HF_SCR_FILE), with
the scredge config in its metadata; `scredge export --from-llama OUT` reads them back.
The folder is written whole or not at all, and replaces only an empty folder or an
earlier export-hf output whose record lists every file in it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from scredge import contract
from scredge.artifact import (
    listed_member,
    sha256_file,
    verified_copies,
    verify_manifest,
)
from scredge.config import SCRConfig
from scredge.deps import require
from scredge.destination import (
    check_folder_place,
    destination_lock,
    recover_hidden,
    replace_folder,
)
from scredge.errors import ScredgeError
from scredge.files import read_json_limited
from scredge.hf_config import FAMILIES, llama_config

DTYPES = ("float32", "bfloat16", "float16")
PARTIAL_INFIX = ".export-hf-partial-"


@dataclass(frozen=True)
class HFExport:
    """What `export_hf` wrote."""

    folder: Path
    architecture: str  # LlamaForCausalLM | MistralForCausalLM | Qwen2ForCausalLM
    files: tuple[str, ...]
    scr_layers: tuple[int, ...]
    max_abs_gamma: float  # 0: SCR is an exact identity, transformers' logits are scredge's

    @property
    def scr_active(self) -> bool:
        return self.max_abs_gamma != 0.0


def hf_family(config: SCRConfig) -> str:
    """The transformers family that runs this base: biases -> qwen2, a window -> mistral."""
    if config.attention_bias:
        return "qwen2"
    return "llama" if config.window is None else "mistral"


def hf_config(config: SCRConfig, dtype: str, eos: tuple[int, ...] = (),
              bos: int | None = None):
    """(config.json as transformers writes it for the base of `config`, the transformers
    config), checked by reading the JSON back as --from-llama does: what does not
    round-trip is refused by name."""
    transformers = require("transformers")
    family = hf_family(config)
    kinds = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
             "qwen2": transformers.Qwen2Config}
    kwargs = dict(
        architectures=[FAMILIES[family]], vocab_size=config.vocab_size,
        hidden_size=config.d_model, intermediate_size=config.d_ff,
        num_hidden_layers=config.n_layers, num_attention_heads=config.n_heads,
        num_key_value_heads=config.n_kv_heads, head_dim=config.head_dim, hidden_act="silu",
        rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tie_embeddings,
        rope_theta=config.rope_theta, dtype=dtype, bos_token_id=bos,
        eos_token_id=(list(eos) if len(eos) > 1 else eos[0]) if eos else None)
    if config.rope_scaling is not None:
        kwargs["rope_scaling"] = config.rope_scaling.to_dict()
    if family == "mistral":
        kwargs["sliding_window"] = config.window
    if family == "qwen2":  # every layer slides (max_window_layers 0) or none does
        kwargs.update(use_sliding_window=config.window is not None,
                      sliding_window=config.window, max_window_layers=0)
    hf = kinds[family](**kwargs)
    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        written = json.loads((Path(tmp) / contract.CONFIG_FILE).read_text())
    base = config.with_(scr_layers=())
    back = llama_config(written, scr_layers=())
    differ = [k for k, v in base.to_dict().items() if back.to_dict().get(k) != v]
    if differ:
        raise ScredgeError(
            f"transformers' {FAMILIES[family]} cannot represent this model's base",
            received=", ".join(f"{k}={getattr(base, k)!r}" for k in differ),
            expected=f"fields a {FAMILIES[family]} config.json reads back unchanged",
            fix="export an ONNX artifact with `scredge export --weights` instead")
    return written, hf


def read_run(run: Path) -> tuple[Path, SCRConfig, Path | None]:
    """(weights, config, folder holding tokenizer files or None) of a run or artifact folder
    (model.safetensors inside) or of a .safetensors checkpoint file."""
    from scredge.ref.checkpoint import read_config
    from scredge.tokenizer_files import read_json

    run = Path(run)
    folder = run if run.is_dir() else None
    weights = run / contract.WEIGHTS_FILE if folder else run
    beside = run / contract.CONFIG_FILE if folder else run.with_suffix(".config.json")
    if folder and beside.is_file() and "model_type" in read_json(beside):
        raise ScredgeError("RUN is already a Hugging Face folder", received=str(run),
                           expected="a scredge run, artifact folder or checkpoint",
                           fix="it loads in transformers as it is")
    if folder and not weights.is_file() and (run / contract.MANIFEST_FILE).is_file():
        from scredge.artifact import read_member_json, reference_weights

        reference_weights(run, read_member_json(run, contract.MANIFEST_FILE,
                                                contract.MANIFEST_FILE), "export-hf")
    if not weights.is_file():
        raise ScredgeError("no scredge checkpoint at RUN", received=str(run),
                           expected=f"a folder with {contract.WEIGHTS_FILE} (a `scredge train` "
                                    "run or an artifact) or a .safetensors file")
    config = read_config(weights)
    if config is None and beside.is_file():
        config = SCRConfig.load(beside)
    if config is None:
        raise ScredgeError("the checkpoint carries no scredge config and none is beside it",
                           received=str(weights), expected=f"{beside.name} beside it")
    return weights, config, folder


def _tokenizer_extras(folder: Path | None, vocab: int) -> tuple[list[str], tuple, int | None]:
    """(tokenizer files to copy, eos ids, bos id) of a run folder; none without
    tokenizer.json."""
    from scredge.tokenizer_files import find_tokenizer, read_json

    tok = find_tokenizer(folder, {}, vocab) if folder is not None else None
    if tok is None:
        return [], (), None
    bos = None
    gen = folder / contract.GENERATION_CONFIG_FILE
    if gen.is_file():
        bos = read_json(gen).get("bos_token_id")
    return list(tok.files), tok.eos_token_ids, bos if isinstance(bos, int) else None


def export_hf(run: Path, out: Path, dtype: str = "float32", force: bool = False) -> HFExport:
    """Write the transformers folder `out` from the scredge checkpoint at `run`."""
    if dtype not in DTYPES:
        raise ScredgeError("unknown export-hf dtype", received=repr(dtype),
                           expected=f"one of {list(DTYPES)}")
    out = Path(out).absolute()
    if out.parent.is_dir():
        with destination_lock(out):
            recover_hidden(out)
    check_out(out, force)
    with verified_run(Path(run)) as source:
        return _export_hf(source, Path(run), out, dtype, force)


@contextmanager
def verified_run(run: Path) -> Iterator[Path]:
    """RUN itself, or, for an artifact folder (a manifest.json), a private copy of the
    files export-hf reads, made from the bytes the manifest verifies (read_listed_bytes):
    an artifact is read through the same trust boundary as by every other command, so a
    file swapped or linked in from outside the folder is refused, never copied."""
    if not (run.is_dir() and (run / contract.MANIFEST_FILE).is_file()):
        yield run
        return
    from scredge.artifact import reference_weights

    manifest = verify_manifest(run)
    reference_weights(run, manifest, "export-hf")  # a slim folder: names --keep-reference
    names = [contract.WEIGHTS_FILE, contract.CONFIG_FILE, *(n for n in contract.TOKENIZER_FILES
                                      if listed_member(run, manifest, n, "tokenizer file"))]
    with verified_copies(run, manifest, names) as staging:
        yield staging


def _export_hf(source: Path, run: Path, out: Path, dtype: str, force: bool) -> HFExport:
    torch = require("torch")
    st = require("safetensors.torch")
    transformers = require("transformers")
    from scredge.ref.checkpoint import CONFIG_METADATA_KEY, load_state_dict

    weights, config, folder = read_run(source)
    tok_files, eos, bos = _tokenizer_extras(folder, config.vocab_size)
    hf, hf_object = hf_config(config, dtype, eos, bos)
    tensors = load_state_dict(weights, config)  # names and shapes checked, float32
    scr = {k: v.contiguous() for k, v in tensors.items() if ".scr." in k}
    base = {k: v.to(getattr(torch, dtype)).contiguous() for k, v in tensors.items()
            if ".scr." not in k}
    gamma = max((v.abs().max().item() for k, v in scr.items() if k.endswith("scr.scale")),
                default=0.0)
    arch = hf["architectures"][0]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_INFIX}", dir=out.parent))
    try:
        (tmp / contract.CONFIG_FILE).write_text(json.dumps(hf, indent=2) + "\n")
        st.save_file(base, str(tmp / contract.WEIGHTS_FILE), metadata={"format": "pt"})
        if scr:
            st.save_file(scr, str(tmp / contract.HF_SCR_FILE), metadata={
                "format": "pt", CONFIG_METADATA_KEY: json.dumps(config.to_dict())})
        for name in tok_files:
            shutil.copyfile(folder / name, tmp / name)
        if contract.GENERATION_CONFIG_FILE not in tok_files:
            transformers.GenerationConfig.from_model_config(hf_object).save_pretrained(tmp)
        (tmp / contract.HF_README_FILE).write_text(readme(arch, gamma, config, Path(run), dtype))
        files = sorted(p.name for p in tmp.iterdir())
        record = {"scredge_export_hf": 1, "source": str(Path(run).absolute()),
                  "files": {name: sha256_file(tmp / name) for name in files}}
        (tmp / contract.HF_EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        replace_folder(tmp, out, lambda o: check_out(o, force))  # checked again there
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return HFExport(out, arch, tuple(sorted([*files, contract.HF_EXPORT_RECORD])),
                    config.scr_layers, gamma)


def readme(arch: str, gamma: float, config: SCRConfig, run: Path, dtype: str) -> str:
    scr_file = contract.HF_SCR_FILE
    if not config.scr_layers:
        scr_text = "The model has no SCR layers: transformers runs all of it."
    elif gamma == 0.0:
        scr_text = (f"Its SCR layers {list(config.scr_layers)} have gamma = 0 (an exact "
                    f"identity), so transformers' logits are scredge's. Their tensors are in "
                    f"`{scr_file}`.")
    else:
        scr_text = (f"**transformers runs the base model only, without SCR.** The SCR layers "
                    f"{list(config.scr_layers)} (max |gamma| = {gamma:.4g}) "
                    f"have no transformers counterpart; their tensors are in `{scr_file}`, "
                    "which transformers ignores, so its logits are those of scredge's model "
                    "with SCR switched off, not of the trained SCR model.")
    return (f"# {arch}, exported by `scredge export-hf`\n\n"
            f"From `{run}` ({dtype} weights). Load it with\n"
            "`transformers.AutoModelForCausalLM.from_pretrained(this_folder)`.\n\n"
            f"{scr_text}\n\n"
            f"Back to scredge, SCR included: `scredge export --from-llama this_folder --out "
            f"ARTIFACT` reads `{scr_file}` when present.\n\n"
            f"`{contract.HF_EXPORT_RECORD}` lists the files written here (sha256), so a "
            "later `scredge export-hf --force` replaces only them.\n")


def check_out(out: Path, force: bool) -> None:
    """`out` is new, an empty folder, or (with force) an earlier export-hf output holding
    only the files its record lists."""
    check_folder_place(out)
    if not out.exists() or not any(out.iterdir()):
        return
    found = sorted(p.name for p in out.iterdir())
    try:
        listed = dict(read_json_limited(out / contract.HF_EXPORT_RECORD,
                                        contract.HF_EXPORT_RECORD)["files"])
    except (ScredgeError, ValueError, KeyError, TypeError):
        raise ScredgeError("OUT is a non-empty folder that export-hf did not write",
                           received=f"{out} holds {', '.join(found[:8])}",
                           expected="a new or empty folder, or an earlier export-hf output",
                           fix="choose another OUT, or move its contents away yourself"
                           ) from None
    unlisted = [n for n in found if n not in listed and n != contract.HF_EXPORT_RECORD]
    if unlisted or any((out / n).is_dir() or (out / n).is_symlink() for n in found):
        raise ScredgeError("OUT holds files export-hf did not write; they are not replaced",
                           received=", ".join(unlisted[:8]) or "a folder or link",
                           expected=f"only the files {contract.HF_EXPORT_RECORD} lists",
                           fix="move them out of the folder, or choose another OUT")
    changed = [n for n in found if n in listed and sha256_file(out / n) != listed[n]]
    if changed:  # edited since we wrote it: the user's work now, not ours to delete
        raise ScredgeError("OUT holds files changed since export-hf wrote them",
                           received=", ".join(changed[:8]),
                           expected=f"the files as {contract.HF_EXPORT_RECORD} records them",
                           fix="copy your changes elsewhere, or choose another OUT")
    if not force:
        raise ScredgeError("OUT is an earlier export-hf output", received=str(out),
                           fix="pass --force to replace it, or choose another OUT")
