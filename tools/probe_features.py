"""The hostile-user probe's cases for the newest features: `--from-gguf` files (class 3:
model files), constrained output (`--json-schema` / `--regex` / `--grammar`, the API's
and the server's `response_format`: class 8), speculative decoding (`--speculative`,
`--speculative-k`, a draft that does not fit: class 9) and the server's chunked prefill
cut by a disconnect or the timeout (class 7). Cases are `probe_fixtures.Case`s, run and
classified by tools/probe_hardening.py.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from probe_fixtures import HF_CONFIG, Case, gen
from probe_server import LONG_IDS, case

# ---- GGUF files (class 3) ---------------------------------------------------------------
GGUF_STRING, GGUF_ARRAY, GGUF_UINT32 = 8, 9, 4


def _gguf_string(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _gguf_header(tensors: int, kvs: int, version: int = 3, magic: bytes = b"GGUF") -> bytes:
    return magic + struct.pack("<IQQ", version, tensors, kvs)


def _arch_kv(arch: str = "llama") -> bytes:
    return (_gguf_string("general.architecture") + struct.pack("<I", GGUF_STRING)
            + _gguf_string(arch))


def _valid_gguf(path: Path) -> None:
    """A llama GGUF of the probe's micro shape (random F32 tensors, no tokenizer), written
    with the gguf package's own writer."""
    import gguf
    import numpy as np

    c = HF_CONFIG
    d, ff, layers, vocab = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], \
        c["vocab_size"]
    kv = d // c["num_attention_heads"] * c["num_key_value_heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,),
              "output.weight": (vocab, d)}
    for i in range(layers):
        shapes.update({f"blk.{i}.{n}": s for n, s in (
            ("attn_norm.weight", (d,)), ("ffn_norm.weight", (d,)), ("attn_q.weight", (d, d)),
            ("attn_k.weight", (kv, d)), ("attn_v.weight", (kv, d)),
            ("attn_output.weight", (d, d)), ("ffn_gate.weight", (ff, d)),
            ("ffn_up.weight", (ff, d)), ("ffn_down.weight", (d, ff)))})
    for name, shape in shapes.items():
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.02)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _gguf_case(name: str, make) -> Case:
    """`scredge export --from-gguf cases/NAME.gguf`: refused, nothing written."""
    def setup(work, name=name, make=make):
        path = work / "cases" / f"{name}.gguf"
        base = work / "cases" / "valid.gguf"
        if not base.exists():
            _valid_gguf(base)
        data = make(base.read_bytes(), path)
        if data is not None:
            path.write_bytes(data)

    def nothing_written(work, name=name):
        out = work / "cases" / f"out_gguf_{name}"
        return f"{out.name} was written" if out.exists() else None

    return Case(f"--from-gguf {name}", 3, ["scredge", "export", "--from-gguf",
                                           f"cases/{name}.gguf", "--out",
                                           f"cases/out_gguf_{name}"], "error", setup,
                nothing_written)


def _gpt2(data: bytes, path: Path) -> None:
    from gguf_files import write_other_architecture  # tests/, on the path probe_fixtures set

    write_other_architecture(path)


def gguf_cases() -> list[Case]:
    huge = 2**62
    tensor_info = (_gguf_string("token_embd.weight") + struct.pack("<I", 2)
                   + struct.pack("<QQ", 2**40, 2**40) + struct.pack("<IQ", 0, 0))
    makers = {
        "other_architecture_gpt2": _gpt2,
        "truncated_at_60_percent": lambda d, p: d[:len(d) * 6 // 10],
        "truncated_in_the_header": lambda d, p: d[:40],
        "empty": lambda d, p: b"",
        "corrupt_magic": lambda d, p: b"GGUX" + d[4:],
        "version_99": lambda d, p: d[:4] + struct.pack("<I", 99) + d[8:],
        "tensor_count_2**62": lambda d, p: d[:8] + struct.pack("<Q", huge) + d[16:],
        "kv_count_2**62": lambda d, p: d[:16] + struct.pack("<Q", huge) + d[24:],
        "key_length_2**62": lambda d, p: _gguf_header(0, 1) + _gguf_string(b"k", huge),
        "metadata_array_2**40": lambda d, p: (
            _gguf_header(0, 2) + _arch_kv() + _gguf_string("llama.block_count")
            + struct.pack("<IIQ", GGUF_ARRAY, GGUF_UINT32, 2**40)),
        "tensor_2**40_by_2**40": lambda d, p: (
            _gguf_header(1, 1) + _arch_kv() + tensor_info),
        "random_bytes": lambda d, p: b"GGUF" + bytes(range(256)) * 64,
    }
    return [_gguf_case(name, make) for name, make in makers.items()]


# ---- constrained output (class 8) -------------------------------------------------------
def _file_arg_case(name: str, flag: str, content: str, expect: str = "error") -> Case:
    def setup(work, name=name, content=content):
        (work / "cases" / name).write_text(content)

    return Case(f"generate {flag} {name}", 8,
                gen("base", "--prompt", "hi", flag, f"cases/{name}"), expect, setup)


def _api_format(name: str, fmt: str) -> Case:
    return Case(f"API response_format {name}", 8, ["py",
                "from scredge.runtime import Engine\n"
                "e = Engine.load('base', device='cpu')\n"
                f"print(e.generate('hi', 3, temperature=0, response_format={fmt}).text)"])


def _server_format(name: str, fmt: str, expect: str = "error") -> Case:
    out = case(f"response_format {name}", 'answer(post("/v1/chat/completions", js={'
               '"model": "base", "messages": [{"role": "user", "content": "hi"}], '
               f'"max_tokens": 3, "response_format": {fmt}}}))\n', expect)
    out.cls = 8
    return out


def constrained_cases() -> list[Case]:
    deep = "{" + '"items": {' * 5000 + '"type": "string"' + "}" * 5000 + "}"
    return [
        _file_arg_case("schema_not_json.json", "--json-schema", "{not json"),
        _file_arg_case("schema_type_5.json", "--json-schema", '{"type": 5}'),
        _file_arg_case("schema_a_list.json", "--json-schema", "[1, 2]"),
        _file_arg_case("schema_deep.json", "--json-schema", deep),
        _file_arg_case("grammar_garbage.lark", "--grammar", "start: ((((\n%%%"),
        Case("generate --regex unbalanced", 8, gen("base", "--prompt", "hi", "--regex", "(a")),
        Case("generate --regex 105 KB (valid, under the grammar cap) runs", 8,
             gen("base", "--prompt", "hi", "--regex", "(a|b)*c" * 15000), "ok"),
        Case("generate --json-schema a missing file", 8,
             gen("base", "--prompt", "hi", "--json-schema", "cases/nowhere.json")),
        _api_format("a string", "'json'"),
        _api_format("type 5", "{'type': 5}"),
        _api_format("json_schema without schema", "{'type': 'json_schema'}"),
        _api_format("schema a number", "{'type': 'json_schema', 'json_schema': "
                                       "{'schema': 5}}"),
        _api_format("pattern 1 MB", "{'type': 'json_schema', 'json_schema': {'schema': "
                                    "{'type': 'string', 'pattern': '(a|b)*' * 150000}}}"),
        _server_format("unknown type", '{"type": "yaml"}'),
        _server_format("a list", '[{"type": "json_object"}]'),
        _server_format("schema a string", '{"type": "json_schema", "json_schema": '
                                          '{"schema": "object"}}'),
        _server_format("schema type 5", '{"type": "json_schema", "json_schema": '
                                        '{"schema": {"type": 5}}}'),
        _server_format("pattern 1 MB", '{"type": "json_schema", "json_schema": {"schema": '
                                       '{"type": "string", "pattern": "(a|b)*" * 150000}}}'),
        _server_format("json_object served", '{"type": "json_object"}', "ok"),
    ]


# ---- speculative decoding (class 9) -------------------------------------------------------
def _draft_other_vocab(work: Path) -> None:
    folder = work / "cases" / "draft_vocab_300"
    if folder.exists():
        return
    from scredge.config import SCRConfig
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    config = SCRConfig(vocab_size=300, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2,
                       d_ff=64, window=16, scr_layers=(0,))
    export_artifact(build_model(config, seed=2), folder)


def speculative_cases() -> list[Case]:
    spec = ["--prompt", "hello world", "--max-new-tokens", "4"]
    out = [Case(f"generate --speculative {label}", 9,
                ["scredge", "generate", "base", *spec, *args])
           for label, args in (
               ("a missing folder", ["--speculative", "cases/no_draft"]),
               ("a file", ["--speculative", "micro.json"]),
               ("-k 0", ["--speculative", "ngram", "--speculative-k", "0"]),
               ("-k -3", ["--speculative", "ngram", "--speculative-k", "-3"]),
               ("-k 10**9", ["--speculative", "ngram", "--speculative-k", "1000000000"]),
               ("-k without --speculative", ["--speculative-k", "0"]))]
    out.append(Case("generate --speculative a draft of another vocabulary", 9,
                    ["scredge", "generate", "base", *spec, "--speculative",
                     "cases/draft_vocab_300"], "error", _draft_other_vocab, timeout=120))
    out.append(Case("generate --speculative ngram runs", 9,
                    ["scredge", "generate", "base", *spec, "--greedy", "--speculative",
                     "ngram"], "ok"))
    out.append(Case("serve --speculative a draft of another vocabulary", 9,
                    ["scredge", "serve", "base", "--port", "0", "--speculative",
                     "cases/draft_vocab_300"], "error", _draft_other_vocab, timeout=120))
    out.append(Case("serve --speculative-k 0", 9,
                    ["scredge", "serve", "base", "--port", "0", "--speculative", "ngram",
                     "--speculative-k", "0"]))
    return out


# ---- the server's chunked prefill, cut (class 7) ------------------------------------------
_TIMEOUT_CUT = f'''
proc, url, log = spawn("--timeout", "60")
try:
    long = {{"model": "base", "prompt": ids(2 * {LONG_IDS}), "max_tokens": 1}}
    t0 = time.time()
    post("/v1/completions", url=url, js=long)
    one = time.time() - t0
finally:
    proc.terminate(); proc.wait(30)
limit = max(0.5, one / 4)
proc, url, log = spawn("--timeout", f"{{limit:.2f}}")
try:
    t0 = time.time()
    r = post("/v1/completions", url=url, js=long)
    took = time.time() - t0
    if r.status_code != 504 or took > limit + one / 2:
        raise ScredgeError(f"answered {{r.status_code}} after {{took:.1f}} s (timeout "
                           f"{{limit:.1f}} s, a whole prefill {{one:.1f}} s)")
    h = httpx.get(url + "/health", timeout=10).status_code
    if h != 200:
        raise RuntimeError(f"/health {{h}} after the cut")
    log_check(log, 0)
    print(f"504 after {{took:.1f}} s (timeout {{limit:.1f}} s; whole prefill {{one:.1f}} s)")
finally:
    proc.terminate(); proc.wait(30)
'''


def prefill_cut_cases() -> list[Case]:
    return [case("--timeout mid-prefill: 504 on time, /health 200", _TIMEOUT_CUT, "ok", 240)]


def feature_cases() -> list[Case]:
    return gguf_cases() + constrained_cases() + speculative_cases() + prefill_cut_cases()


if __name__ == "__main__":
    print(json.dumps([c.name for c in feature_cases()], indent=1))
