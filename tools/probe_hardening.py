"""A hostile-user probe of issue 30, classes 1-6: each case runs in its own subprocess with
a timeout and is classified as

    clean      a refusal (exit status 2 and "scredge ...: error:", or a ScredgeError from
               the API) where one was due, or a correct run where the input was valid
    traceback  a Python traceback (any exception that is not a ScredgeError)
    hang       still running at the timeout
    silent     exit status 0 where a refusal was due (or a wrong result)
    lost       a file of the user's gone or changed afterwards

Usage: .venv/bin/python tools/probe_hardening.py [WORKDIR] [--only SUBSTRING]
It builds its own micro artifacts (with a byte-level BPE tokenizer and a chat template)
under WORKDIR (default: a fresh temporary folder) and prints the table.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_features import feature_cases  # noqa: E402
from probe_fixtures import (  # noqa: E402 - the tools folder is not a package
    API,
    HF_CONFIG,
    PY,
    ROOT,
    SCREDGE,
    TEMPLATES,
    Case,
    _big_template,
    _donor,
    _export_to,
    _file_case,
    _golden_case,
    _index_case,
    _json_edit,
    _messages_case,
    _weights_case,
    art,
    build,
    gen,
    hf_folder,
    rehash,
    write_safetensors,
)
from probe_server import class7, stop_server  # noqa: E402

# ---- cases ------------------------------------------------------------------------------


def template_case(name: str, template: str, via: str = "cli", expect: str = "error") -> Case:
    def setup(work, name=name, template=template):
        folder = art(work, name)
        (folder / "chat_template.jinja").write_text(template)
        rehash(folder)

    if via == "cli":
        argv = gen(f"cases/{name}", "--chat", "--prompt", "hi")
    else:  # the Python API (the server renders through this same Engine.render_chat)
        argv = ["py", f"from scredge.runtime import Engine\n"
                      f"e = Engine.load('cases/{name}', device='cpu')\n"
                      f"print(e.chat([{{'role': 'user', 'content': 'hi'}}], 2,"
                      f" temperature=0).ids)"]
    return Case(f"template {name} ({via})", 1, argv, expect, setup)


def cases() -> list[Case]:
    out = [template_case(n, t) for n, t in TEMPLATES.items()]
    out += [template_case("api_" + n, TEMPLATES[n], via="api")
            for n in ("nested_loops", "recursion", "huge_string")]
    out += [template_case("good_template", "{% for m in messages %}{{ m.content }}"
                          "{% endfor %}", expect="ok")]
    out += class2() + class3() + class4() + class5() + class6() + class7()
    out += feature_cases()
    return out


def class2() -> list[Case]:
    chat = ["--chat", "--prompt", "hi"]
    hf_cases = {
        "hidden_size_str": {**HF_CONFIG, "hidden_size": "32"},
        "layers_1e9": {**HF_CONFIG, "num_hidden_layers": 10**9},
        "rms_norm_eps_null": {**HF_CONFIG, "rms_norm_eps": None},
        "heads_list": {**HF_CONFIG, "num_attention_heads": [4]},
        "rope_theta_str": {**HF_CONFIG, "rope_theta": "1e4"},
        "rope_scaling_list": {**HF_CONFIG, "rope_scaling": [1, 2]},
        "config_array": [HF_CONFIG],
    }
    out = [
        _messages_case("lone_surrogate", '[{"role": "user", "content": "a\\ud800"}]'),
        _messages_case("dev_zero", "link:/dev/zero"),
        _messages_case("deep_nesting", "[" * 100000 + "]" * 100000),
        _messages_case("a_number", "42"),
        _messages_case("invalid_utf8", b'[{"role": "user", "content": "\xff\xfe"}]'),
        _messages_case("huge_file", b"[" + b'{"role":"user","content":"x"},' * 700000
                       + b'{"role":"user","content":"x"}]'),
        _messages_case("content_object", '[{"role": "user", "content": {"a": [1, {"b": '
                                         '"\\udfff"}]}}]'),
        _file_case("tokenizer_section_list", 2, _json_edit(
            "config.json", lambda d: {**d, "tokenizer": [1, 2]}), lambda f: gen(f, *chat)),
        _file_case("eos_ids_strings", 2, _json_edit(
            "config.json", lambda d: {**d, "tokenizer": {"eos_token_ids": ["2"]}}),
            lambda f: gen(f, *chat)),
        _file_case("chat_template_list_bad", 2, _json_edit(
            "tokenizer_config.json", lambda d: {**d, "chat_template": [
                {"name": "default", "template": 5}]}), lambda f: gen(f, *chat)),
        _file_case("eos_token_int", 2, _json_edit(
            "tokenizer_config.json", lambda d: {**d, "eos_token": 5}), lambda f: gen(f, *chat)),
        _file_case("tokenizer_config_array", 2, _json_edit(
            "tokenizer_config.json", lambda d: [d]), lambda f: gen(f, *chat)),
        _file_case("quantization_section_str", 2, _json_edit(
            "config.json", lambda d: {**d, "quantization": "int4"}),
            lambda f: ["scredge", "info", f]),
        _file_case("template_20MB", 2, _big_template, lambda f: gen(f, *chat)),
    ]
    for name, config in hf_cases.items():
        out.append(Case(f"HF config {name}", 2,
                        ["scredge", "export", "--from-llama", f"cases/hf_{name}", "--out",
                         f"cases/out_hf_{name}"], "error",
                        lambda work, name=name, config=config: hf_folder(work, f"hf_{name}",
                                                                         config)))
    out.append(Case("--config a JSON array", 2,
                    ["scredge", "export", "--config", "cases/array.json", "--out",
                     "cases/out_array"], "error",
                    lambda work: (work / "cases" / "array.json").write_text("[1, 2]")))
    return out


def class3() -> list[Case]:
    f32 = ("F32", [4], b"\0" * 16)
    out = [
        _weights_case("huge_header_length", lambda p: write_safetensors(
            p, {"model.embed_tokens.weight": f32}, header_len=2**62)),
        _weights_case("offsets_past_end", lambda p: p.write_bytes(
            struct.pack("<Q", 80) + json.dumps({"model.embed_tokens.weight": {
                "dtype": "F32", "shape": [2**20, 2**20], "data_offsets": [0, 2**42]}}
            ).encode().ljust(80) + b"\0" * 16)),
        _weights_case("truncated", lambda p: write_safetensors(
            p, {"model.embed_tokens.weight": f32}, truncate=30)),
        _weights_case("shape_lies", lambda p: write_safetensors(
            p, {"model.embed_tokens.weight": ("F32", [2**31, 2**31], b"\0" * 16)})),
        _weights_case("header_not_json", lambda p: p.write_bytes(
            struct.pack("<Q", 4) + b"\xff\xfe{}")),
        Case("safetensors index naming ../", 3,
             ["scredge", "export", "--from-llama", "cases/st_index", "--out",
              "cases/out_index"], "error", _index_case),
        Case("--weights with a huge header length", 3,
             ["scredge", "export", "--config", "micro.json", "--weights", "cases/bad.st",
              "--out", "cases/out_bad_st"], "error",
             lambda work: write_safetensors(work / "cases" / "bad.st", {"a": f32},
                                            header_len=2**40)),
        Case("--config d_model 2**40", 3,
             ["scredge", "export", "--config", "cases/huge.json", "--out", "cases/out_huge"],
             "error", lambda work: (work / "cases" / "huge.json").write_text(json.dumps(
                 {**json.loads((work / "micro.json").read_text()), "d_model": 2**40,
                  "n_heads": 2**20, "n_kv_heads": 2**20}))),
        Case("HF hidden_size 2**40", 3,
             ["scredge", "export", "--from-llama", "cases/hf_huge", "--out", "cases/out_h"],
             "error", lambda work: hf_folder(work, "hf_huge", {
                 **HF_CONFIG, "hidden_size": 2**40, "num_attention_heads": 2**20,
                 "num_key_value_heads": 2**20})),
        Case("golden npz header claims 2**40 ids", 3,
             ["scredge", "parity", "cases/golden_lie", "--backend", "ort"], "error",
             lambda work: _golden_case(work, "golden_lie", shape=(2**20, 2**20))),
        Case("golden ids out of range", 3,
             ["scredge", "parity", "cases/golden_range", "--backend", "ort"], "error",
             lambda work: _golden_case(work, "golden_range", ids_value=10**6)),
    ]
    return out


def class4() -> list[Case]:
    base = ["scredge", "generate", "base", "--prompt", "hi", "--max-new-tokens", "4"]
    out = [Case(f"sampling {flag} {value}", 4, [*base, flag, value])
           for flag, value in (("--repetition-penalty", "1e-310"),
                               ("--repetition-penalty", "1e300"),
                               ("--temperature", "1e300"), ("--temperature", "nan"),
                               ("--repetition-penalty", "-0.0"), ("--top-p", "1e-400"))]
    out.append(Case("API repetition_penalty=np.float64(1e-310)", 4, ["py",
               "import numpy as np\nfrom scredge.runtime import Engine\n"
               "e = Engine.load('base', device='cpu')\n"
               "print(e.generate('hi', 4, repetition_penalty=np.float64(1e-310)).ids)"]))
    out.append(Case("API SamplingParams(top_k=2**80, temperature=1e-320)", 4, ["py",
               "from scredge.runtime import Engine\n"
               "e = Engine.load('base', device='cpu')\n"
               "r = e.generate('hi', 4, top_k=2**80, temperature=1e-320)\n"
               "g = e.generate('hi', 4, temperature=0)\n"
               "assert r.ids == g.ids, (r.ids, g.ids); print(r.ids)"], expect="ok"))
    out.append(Case("penalty at its bound 0.01 runs", 4,
                    [*base, "--repetition-penalty", "0.01", "--greedy"], expect="ok"))
    return out


def class5() -> list[Case]:
    def kept(name, file):
        def check(work):
            if not (work / "cases" / f"{name}.fired").exists():
                return "not exercised: the user's write never ran"
            hits = [p for p in (work / "cases").rglob(file)
                    if p.read_text() == "user data" and name in str(p)]
            return None if hits else f"{file} lost"
        return check

    def prep_force(work):
        dst = work / "cases" / "race_force"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(work / "base", dst)

    def prep_hidden(work):
        cases_dir = work / "cases"
        cases_dir.mkdir(exist_ok=True)
        for p in cases_dir.glob(".killed*"):
            shutil.rmtree(p)
        shutil.rmtree(cases_dir / "killed", ignore_errors=True)
        shutil.copytree(work / "base", cases_dir / ".killed.old-999999")
        (cases_dir / ".killed.old-999999" / "notes.txt").write_text("user data")
        rehash(cases_dir / ".killed.old-999999")

    def prep_empty(work):
        d = work / "cases" / "hf_empty"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)

    def two_writers(work):
        shutil.rmtree(work / "cases" / "twice", ignore_errors=True)

    return [
        Case("export: --out made with a file during the run", 5, at_replace(
             "export.pipeline", _export_to(None, "cases/race_new"), "race_new", "mine.txt"),
             "error", lambda work: _unfire(work, "race_new"), kept("race_new", "mine.txt"),
             timeout=300),
        Case("export --force: an unlisted file added during the run", 5, at_replace(
             "export.pipeline", _export_to(None, "cases/race_force", "--force"),
             "race_force", "notes.txt"), "error", lambda work: (_unfire(work, "race_force"),
                                                                prep_force(work)),
             kept("race_force", "notes.txt"), timeout=300),
        Case("export-hf: a file written into the empty OUT during the run", 5, at_replace(
             "export.hf_export", ["scredge", "export-hf", "base", "cases/hf_empty"],
             "hf_empty", "mine.txt"), "error", lambda work: (_unfire(work, "hf_empty"),
                                                             prep_empty(work)),
             kept("hf_empty", "mine.txt"), timeout=300),
        Case("export: previous folder hidden by a kill is restored", 5,
             _export_to(None, "cases/killed"), "error", prep_hidden,
             lambda work: None if (work / "cases" / "killed" / "notes.txt").is_file()
             else "the hidden folder was not restored", timeout=300),
        Case("export: two runs to one new --out, one wins", 5,
             ["sh", "-c", f"{SCREDGE} export --config micro.json --out cases/twice "
                          f"& {SCREDGE} export --config micro.json --out cases/twice;"
                          " wait"], "one-wins", two_writers, timeout=400),
    ]


def at_replace(module: str, argv: list[str], name: str, file: str) -> list[str]:
    """The command run in-process with the user's write made at a fixed point of the run:
    just before the command's `replace_folder` (after its start checks, before its final
    re-check), so the race is exercised every time, not only when a watcher is fast
    enough. The hook lives here, in the probe: the product is run unchanged. It leaves
    cases/NAME.fired, so a run that never reached the point reads "not exercised"."""
    return ["py", f"import sys\nfrom pathlib import Path\nimport scredge.{module} as m\n"
                  "from scredge.cli import main\nreal = m.replace_folder\n"
                  "def hooked(tmp, out, check):\n"
                  "    Path(out).mkdir(exist_ok=True)\n"
                  f"    (Path(out) / {file!r}).write_text('user data')\n"
                  f"    Path('cases/{name}.fired').touch()\n"
                  "    return real(tmp, out, check)\n"
                  f"m.replace_folder = hooked\nsys.exit(main({argv[1:]!r}))\n"]


def _unfire(work: Path, name: str) -> None:
    (work / "cases" / f"{name}.fired").unlink(missing_ok=True)
    if name == "race_new":
        shutil.rmtree(work / "cases" / name, ignore_errors=True)


def class6() -> list[Case]:
    swap = ("from pathlib import Path\nfrom scredge.runtime.loaders import open_artifact, "
            "load_ort\nimport shutil\na = open_artifact('cases/{name}')\n{edit}\n"
            "load_ort(a, device='cpu')\nprint('loaded')")
    graph_edit = ("p = Path('cases/{name}/model.onnx'); b = bytearray(p.read_bytes()); "
                  "b[-64] ^= 0xFF; p.write_bytes(bytes(b))")
    tok_edit = ("from scredge.runtime.tokenizer import load_tokenizer\n"
                "Path('cases/{name}/tokenizer.json').write_text('{{}}')\nload_tokenizer(a)")

    def copy(name):
        return lambda work: art(work, name)

    def link_template(work):
        folder = art(work, "linked_template")
        outside = work / "cases" / "outside.jinja"
        outside.write_text("{{ 'outside' }}")
        (folder / "chat_template.jinja").unlink()
        (folder / "chat_template.jinja").symlink_to(outside)

    def swap_weights(work):
        folder = art(work, "swapped_weights")
        data = bytearray((folder / "model.safetensors").read_bytes())
        data[-8:] = b"\0" * 8
        (folder / "model.safetensors").write_bytes(bytes(data))

    return [
        Case("graph edited after open", 6,
             ["py", swap.format(name="g_swap", edit=graph_edit.format(name="g_swap"))],
             "error", copy("g_swap")),
        Case("graph replaced by another artifact's after open", 6,
             ["py", swap.format(name="g_other", edit="shutil.copy('cases/g_donor/model.onnx',"
                                                     " 'cases/g_other/model.onnx')")],
             "error", lambda work: (_donor(work), art(work, "g_other"))),
        Case("tokenizer.json swapped after open", 6,
             ["py", swap.format(name="t_swap", edit=tok_edit.format(name="t_swap"))],
             "error", copy("t_swap")),
        Case("export-hf: chat template symlinked from outside", 6,
             ["scredge", "export-hf", "cases/linked_template", "cases/out_linked"], "error",
             link_template, lambda work: None if not (work / "cases" / "out_linked").exists()
             else "an output was written"),
        Case("export-hf: weights edited (hash mismatch)", 6,
             ["scredge", "export-hf", "cases/swapped_weights", "cases/out_swapped"], "error",
             swap_weights),
        Case("generate: a listed file replaced by a link outside", 6,
             gen("cases/linked_template", "--chat", "--prompt", "hi"), "error",
             link_template),
    ]


# ---- running ----------------------------------------------------------------------------
def run_case(case: Case, work: Path) -> tuple[str, str]:
    if case.setup is not None:
        case.setup(work)
    if case.argv[0] == "scredge":
        cmd = [SCREDGE, *case.argv[1:]]
    elif case.argv[0] == "py":
        cmd = [PY, "-c", API, case.argv[1]]
    else:
        cmd = case.argv
    env = {**os.environ, "OMP_NUM_THREADS": "1", **case.env}
    proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, start_new_session=True)
    if case.parallel is not None:
        case.parallel(work, proc)
    try:
        out, err = proc.communicate(timeout=case.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return "hang", f"> {case.timeout} s"
    out, err = out.decode(errors="replace"), err.decode(errors="replace")
    lost = case.check(work) if case.check is not None else None
    first = next((line for line in err.splitlines() if "error" in line.lower()), err[-200:])
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:150]
    if lost and lost.startswith("not exercised"):
        return "not exercised", lost
    if lost:
        return "lost", lost
    if case.expect == "one-wins":
        wrote = out.count("wrote") + err.count("wrote")
        refused = err.count("error:")
        ok = (work / "cases" / "twice" / "manifest.json").is_file()
        return ("clean", f"{wrote} wrote, {refused} refused") if refused == 1 and ok else (
            "silent", f"{wrote} wrote, {refused} refused; {out[-200:]} {err[-200:]}")
    if case.expect == "ok":
        return ("clean", "ran: " + out.strip()[-80:]) if proc.returncode == 0 else (
            "silent", f"refused a valid input: {first[:150]}")
    if proc.returncode == 0:
        return "silent", "exit 0: " + out.strip()[-120:]
    if "ScredgeError" in err or "error:" in err:
        return "clean", first.strip()[:150]
    return "traceback", f"exit {proc.returncode}: {err.strip()[-150:]}"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    work = Path(args[0]) if args and args[0] != only else Path(tempfile.mkdtemp(
        prefix="scredge-probe-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "cases").mkdir(exist_ok=True)
    os.chdir(work)
    sys.path.insert(0, str(ROOT))
    build(work)
    try:
        rows, counts = run_all(work, only)
    finally:
        stop_server(work)
    print(f"\n{len(rows)} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print_classes(rows)
    return 0 if set(counts) <= {"clean"} else 1


VERDICTS = ("clean", "traceback", "hang", "silent", "lost", "not exercised")


def print_classes(rows: list) -> None:
    """The table per class: cases and each verdict's count."""
    print("\n| class | cases | " + " | ".join(VERDICTS) + " |")
    print("|---" * (len(VERDICTS) + 2) + "|")
    for cls in sorted({r[0] for r in rows}):
        mine = [r[2] for r in rows if r[0] == cls]
        print(f"| {cls} | {len(mine)} | " + " | ".join(str(mine.count(v)) for v in VERDICTS)
              + " |")


def run_all(work: Path, only: str | None) -> tuple[list, dict]:
    rows, counts = [], {}
    (work / "server.pid").unlink(missing_ok=True)  # a past run's server is not ours
    for case in cases():
        if only and only not in case.name:
            continue
        t0 = time.time()
        verdict, detail = run_case(case, work)
        counts[verdict] = counts.get(verdict, 0) + 1
        rows.append((case.cls, case.name, verdict, time.time() - t0, detail))
        print(f"| {case.cls} | {case.name} | {verdict} | {time.time() - t0:.1f} | "
              f"{detail.replace('|', '/')} |", flush=True)
    return rows, counts


if __name__ == "__main__":
    raise SystemExit(main())
