"""Generated bad input (issue 14): every outcome is a result or a ScredgeError, never
another exception, and no file outside the test's temporary folder changes.

Property tests over manifest.json and config.json (types, missing keys, paths, sizes),
prompts (any unicode, lone surrogates, huge), sampling parameters (NaN, inf, negative,
huge, wrong types) and CLI argument values (any text, non-UTF-8 bytes). Oracle: the
exception type, and snapshots of the shared artifact and of a file beside the copies."""

from __future__ import annotations

import json
import os
import shutil

import onnxruntime as ort
import pytest
from artifact_tools import read_json, rehash, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.runtime import Engine
from scredge.runtime.generation import MAX_NEW_TOKENS
from scredge.runtime.loaders import load_ort, open_artifact

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

SURROGATES = st.sampled_from(["\ud800", "\udc80", "\udfff", "\udcff"])
TEXT = st.one_of(st.text(max_size=12),
                 st.builds(lambda a, s, b: a + s + b, st.text(max_size=4), SURROGATES,
                           st.text(max_size=4)))
NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70),
                   st.sampled_from([0, 1, -1, 1e-320, 1e308, 2**63, -(2**63) - 1]))
SCALAR = st.one_of(st.none(), st.booleans(), NUMBER, TEXT)
JSON = st.recursive(SCALAR, lambda c: st.lists(c, max_size=3)
                    | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=8)
PATHS = st.one_of(st.sampled_from([
    "../outside.txt", "/etc/hostname", "model.onnx", "config.json", "manifest.json",
    "a/../../outside.txt", "", ".", "./model.onnx", "model.onnx/", "x\x00y", "link_out",
    "nested/deep/file", "\udc80", "\ud800", "//etc/passwd", "model.safetensors",
    "../../../../../../etc/hostname"]), TEXT)


@pytest.fixture(scope="module")
def world(small_window_artifact, tmp_path_factory):
    """(shared artifact, a scratch root holding a file beside the copies, its snapshot)."""
    root = tmp_path_factory.mktemp("robust")
    (root / "outside.txt").write_text("the user's own file\n")
    def outside():  # the shared artifact and the files beside the scratch copy `art`
        beside = [p for p in root.iterdir() if p.name != "art"]
        return snapshot(small_window_artifact[1]), sorted(map(str, beside)), snapshot(
            *(p for p in beside if p.is_dir())), (root / "outside.txt").read_bytes()

    before = outside()
    yield small_window_artifact[1], root
    assert outside() == before  # nothing outside the scratch copy changed


def _fresh(world):
    src, root = world
    folder = root / "art"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(src, folder)
    (folder / "link_out").symlink_to(root / "outside.txt")
    return folder


def _open_and_run(folder):
    """A result (a runner that generates) or a ScredgeError; anything else fails."""
    try:
        engine = Engine.load(folder, device="cpu")
        engine.generate([1, 2, 3], 2, temperature=0)
        return True
    except ScredgeError:
        return False


def _manifest_edit():
    entry = st.one_of(JSON, st.fixed_dictionaries({"sha256": st.one_of(TEXT, st.just("0" * 64)),
                                                   "bytes": NUMBER}))
    engine = st.one_of(JSON, st.fixed_dictionaries(
        {"file": PATHS, "backend": st.sampled_from(["onnxruntime", "tensorrt", "x"]),
         "onnxruntime": st.just(ort.__version__),
         "plugins": st.one_of(JSON, st.lists(st.fixed_dictionaries({"python": TEXT})))}))
    return st.one_of(
        st.tuples(st.just("file"), PATHS, entry),
        st.tuples(st.just("key"), st.sampled_from(["files", "engines", "format_version"]),
                  JSON),
        st.tuples(st.just("del"), st.sampled_from(["files", "engines", "format_version"]),
                  st.none()),
        st.tuples(st.just("engine"), st.sampled_from(["ort-cpu", "trt-x"]), engine),
        st.tuples(st.just("whole"), st.none(), JSON))


@settings(SETTINGS, max_examples=30)
@given(edits=st.lists(_manifest_edit(), min_size=1, max_size=3), fix_hashes=st.booleans())
def test_any_manifest(world, edits, fix_hashes):
    folder = _fresh(world)
    manifest = read_json(folder / "manifest.json")
    for kind, key, value in edits:
        if kind == "whole":
            manifest = value
        elif not isinstance(manifest, dict):
            continue
        elif kind == "file" and isinstance(manifest.get("files"), dict):
            manifest["files"][key] = value
        elif kind == "key":
            manifest[key] = value
        elif kind == "del":
            manifest.pop(key, None)
        elif kind == "engine":
            engines = manifest.setdefault("engines", {})
            if isinstance(engines, dict):
                engines[key] = value
    (folder / "manifest.json").write_text(json.dumps(manifest))
    if fix_hashes and isinstance(manifest, dict) and isinstance(manifest.get("files"), dict):
        rehash(folder)
    _open_and_run(folder)


MODEL_FIELDS = ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff",
                "window", "scr_layers", "rope_theta", "norm_eps", "kappa", "tie_embeddings"]
FIELD_VALUE = st.one_of(JSON, st.integers(-3, 40), st.sampled_from([None, 10**12, 2**64]),
                        st.lists(st.integers(-2, 5), max_size=4))


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(MODEL_FIELDS + ["extra"]), FIELD_VALUE,
                               max_size=3),
       drop=st.lists(st.sampled_from(MODEL_FIELDS), max_size=2),
       other=st.dictionaries(st.sampled_from(["export", "io", "model"]), JSON, max_size=1),
       dtype=st.one_of(st.none(), st.sampled_from(["float32", "float16", "int8"]), JSON))
def test_any_config(world, changes, drop, other, dtype):
    folder = _fresh(world)
    settings_ = read_json(folder / "config.json")
    settings_["model"].update(changes)
    for key in drop:
        settings_["model"].pop(key, None)
    if dtype is not None:
        settings_["export"]["dtype"] = dtype
    settings_.update(other)
    (folder / "config.json").write_text(json.dumps(settings_))
    rehash(folder)
    if _open_and_run(folder):  # accepted: the graph must really be this config's
        artifact = open_artifact(folder)
        load_ort(artifact, device="cpu")


@pytest.fixture(scope="module")
def engine(small_window_artifact):
    return Engine.load(small_window_artifact[1], device="cpu")


PROMPTS = st.one_of(
    TEXT, st.text(min_size=1, max_size=40),
    st.builds(lambda n, c: c * n, st.integers(1_000, 20_000), st.sampled_from(["a", "é", "😀"])),
    st.lists(st.integers(-2**70, 2**70), max_size=5),
    st.lists(st.lists(st.integers(0, 255), max_size=3), max_size=3),
    st.lists(TEXT, max_size=3), SCALAR, JSON)


@SETTINGS
@given(prompt=PROMPTS)
def test_any_prompt(engine, prompt):
    try:
        result = engine.generate(prompt, 2, temperature=0)
    except ScredgeError:
        return
    results = result if isinstance(result, list) else [result]
    assert all(len(r.ids) == 2 for r in results)


STOPS = st.one_of(st.none(), TEXT, st.integers(-2**70, 2**70),
                  st.lists(st.one_of(TEXT, st.integers(-2**70, 2**70), SCALAR), max_size=3),
                  JSON)
MAX_NEW = st.one_of(st.integers(-5, 4), st.integers(MAX_NEW_TOKENS + 1, 2**70), SCALAR)


@SETTINGS
@given(temperature=NUMBER | SCALAR, top_k=NUMBER | SCALAR, top_p=NUMBER | SCALAR,
       repetition_penalty=NUMBER | SCALAR, seed=NUMBER | SCALAR, stop=STOPS, n=MAX_NEW)
def test_any_sampling_parameters(engine, temperature, top_k, top_p, repetition_penalty, seed,
                                 stop, n):
    if isinstance(n, int) and not isinstance(n, bool) and 4 < n <= MAX_NEW_TOKENS:
        n = 4  # a valid but long request is a plan, not bad input
    try:
        result = engine.generate("Hi", n, temperature=temperature, top_k=top_k, top_p=top_p,
                                 repetition_penalty=repetition_penalty, seed=seed, stop=stop)
    except ScredgeError:
        return
    assert len(result.ids) <= n and all(0 <= t < 256 for t in result.ids)


def _short(value: str) -> bool:
    """False for a --max-new-tokens value argparse reads as a long but valid request."""
    try:
        return not 4 < int(value) <= MAX_NEW_TOKENS
    except ValueError:
        return True


ARG = st.one_of(TEXT, st.binary(max_size=8).map(os.fsdecode),
                st.sampled_from(["-1", "0", "nan", "inf", "-inf", "1e400", "2", "0.5", "",
                                 "99999999999999999999", "--", "-x", " 3 ", "1_0"]))


@SETTINGS
@given(prompt=ARG, n=ARG.filter(_short), temperature=ARG, top_k=ARG, top_p=ARG, seed=ARG,
       stop=ARG)
def test_any_cli_values(world, capsys, prompt, n, temperature, top_k, top_p, seed, stop):
    src, root = world
    cwd = os.getcwd()
    os.chdir(root)
    try:
        code = main(["generate", str(src), "--prompt", prompt, "--max-new-tokens", n,
                     "--temperature", temperature, "--top-k", top_k, "--top-p", top_p,
                     "--seed", seed, "--stop", stop, "--backend", "ort"])
    except SystemExit as exc:  # argparse's own refusal of a value it cannot parse
        code = exc.code
    finally:
        os.chdir(cwd)
    captured = capsys.readouterr()
    assert code in (0, 2), captured.err
    assert "Traceback" not in captured.err
