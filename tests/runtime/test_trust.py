"""The artifact folder is a trust boundary (issue 14): each case the issue found, first
reproduced, then refused with a ScredgeError (or run correctly). Oracles: the files outside
the folder (unchanged, never hashed into a message), the import machinery (never asked
for a named module), and the exported graph's own inputs, outputs and window."""

from __future__ import annotations

import hashlib
import importlib
import json

import pytest
from artifact_tools import copy_artifact, edit_config, read_json, rehash, snapshot

from scredge.cli import main
from scredge.errors import ScredgeError
from scredge.runtime import Engine
from scredge.runtime.loaders import load_ort, open_artifact


@pytest.fixture
def art(small_window_artifact, tmp_path):
    """A private copy of the W = 16 micro artifact, and a file outside it."""
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's own file\n")
    return copy_artifact(small_window_artifact[1], tmp_path / "art"), outside


def _set_manifest(folder, edit) -> None:
    manifest = read_json(folder / "manifest.json")
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["../outside.txt", "/etc/hostname", "a/../../outside.txt",
                                  "./config.json", ""])
def test_manifest_files_outside_the_folder_are_refused(art, name):
    """Before: '../outside.txt' and '/etc/hostname' were read and hashed (the hash printed)."""
    folder, outside = art
    digest = hashlib.sha256(outside.read_bytes()).hexdigest()
    _set_manifest(folder, lambda m: m["files"].__setitem__(name, {"sha256": "0" * 64,
                                                                  "bytes": 0}))
    with pytest.raises(ScredgeError, match="outside its folder") as err:
        open_artifact(folder)
    assert digest not in str(err.value)


def test_a_symlink_leading_out_is_refused(art):
    folder, outside = art
    (folder / "notes.txt").symlink_to(outside)
    _set_manifest(folder, lambda m: m["files"].__setitem__("notes.txt", {"sha256": "0" * 64,
                                                                         "bytes": 0}))
    rehash(folder)
    with pytest.raises(ScredgeError, match="symlink leading outside"):
        open_artifact(folder)
    # the config itself swapped for a link to a file outside (listed, hashes recomputed)
    (folder / "notes.txt").unlink()
    _set_manifest(folder, lambda m: m["files"].pop("notes.txt"))
    real = folder.parent / "config.json"
    (folder / "config.json").rename(real)
    (folder / "config.json").symlink_to(real)
    with pytest.raises(ScredgeError, match="symlink leading outside"):
        open_artifact(folder)


def test_an_engine_entry_names_another_folders_model(art, tmp_path, small_window_artifact):
    """Before: `generate` ran ../other/model.onnx with no hash check."""
    import onnxruntime as ort

    folder, _ = art
    copy_artifact(small_window_artifact[1], tmp_path / "other")
    entry = {"file": "../other/model.onnx", "backend": "onnxruntime",
             "onnxruntime": ort.__version__}
    _set_manifest(folder, lambda m: m.setdefault("engines", {}).__setitem__("ort-cpu", entry))
    with pytest.raises(ScredgeError, match="outside its folder"):
        Engine.load(folder, device="cpu")
    # inside the folder but not listed (so not hashed): refused too
    (folder / "model.ort-cpu.onnx").write_bytes((folder / "model.onnx").read_bytes())
    entry["file"] = "model.ort-cpu.onnx"
    _set_manifest(folder, lambda m: m["engines"].__setitem__("ort-cpu", entry))
    with pytest.raises(ScredgeError, match="does not list"):
        Engine.load(folder, device="cpu")


@pytest.mark.parametrize(("key", "value"), [
    ("files", "model.onnx"), ("files", ["model.onnx"]), ("engines", "ort-cpu"),
    ("engines", {"ort-cpu": "model.onnx"}), ("engines", {"ort-cpu": {"file": 3}}),
    ("files", {"model.onnx": "abc"}), ("files", {"model.onnx": {"sha256": 1, "bytes": 2}}),
])
def test_manifest_entries_of_the_wrong_type(art, key, value):
    """Before: TypeError / AttributeError tracebacks."""
    folder, _ = art
    _set_manifest(folder, lambda m: m.__setitem__(key, value))
    with pytest.raises(ScredgeError, match="manifest.json is malformed"):
        Engine.load(folder)


@pytest.mark.parametrize("text", ["[]", "null", "{", "\xff\xfe", "[" * 100_000])
def test_manifest_that_is_not_an_object(art, text):
    folder, _ = art
    (folder / "manifest.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(ScredgeError, match="manifest.json is malformed"):
        open_artifact(folder)


def test_unlisted_config_is_refused(art):
    """Every file read must be listed and hashed: config.json dropped from `files`."""
    folder, _ = art
    _set_manifest(folder, lambda m: m["files"].pop("config.json"))
    with pytest.raises(ScredgeError, match="does not list 'config.json'"):
        open_artifact(folder)


def test_plugin_modules_are_never_imported_by_name(monkeypatch):
    """Before: trt_loader imported plugin["python"] as given (any module on sys.path)."""
    from scredge.runtime.trt_loader import register_plugin

    asked = []
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: asked.append(name) or real(name, *a))
    for module in ("os", "antigravity", "scredge.cli", "../evil"):
        plugin = {"name": "Realign", "namespace": "scr", "version": "1", "python": module}
        with pytest.raises(ScredgeError, match="does not ship"):
            register_plugin(object(), plugin)
    with pytest.raises(ScredgeError, match="malformed"):
        register_plugin(object(), "scredge.plugins.realign.python_plugin")
    assert asked == []


@pytest.mark.parametrize(("fields", "needle"), [
    ({"n_layers": 1, "scr_layers": [0]}, "inputs/outputs"),
    ({"n_layers": 3}, "inputs/outputs"),
    ({"scr_layers": [0]}, "inputs/outputs"),
    ({"n_kv_heads": 4}, "shape of past_key_values.0.key"),
    ({"n_heads": 2}, "shape of past_key_values.0.key"),
    ({"vocab_size": 300}, "shape of logits"),
    ({"window": 8}, "window"),
    ({"window": 32}, "window"),
    ({"window": None}, "window"),
])
def test_config_that_disagrees_with_its_graph(art, fields, needle, capsys):
    """Before: onnxruntime tracebacks about missing inputs, and a changed window silently
    accepted. The same clean error from `bench`."""
    folder, _ = art
    edit_config(folder, **fields)
    with pytest.raises(ScredgeError, match=f"does not match the graph(.|\n)*{needle}"):
        Engine.load(folder)
    assert main(["bench", str(folder), "--gen-len", "2", "--prompt-len", "2",
                 "--repeat", "1"]) == 2
    assert "does not match the graph" in capsys.readouterr().err


def _strip_window_record(folder) -> None:
    import onnx

    model = onnx.load(folder / "model.onnx")
    del model.metadata_props[:]
    onnx.save(model, folder / "model.onnx")
    rehash(folder)


@pytest.mark.parametrize("window", [8, 32, 15, 17])
def test_window_probe_without_the_recorded_window(small_window_concat, tmp_path, window):
    """A concat graph without the export's window record (an older export, or the record
    stripped): the probe call, P = W-1 past positions in, must give P' = W-1 out."""
    folder = copy_artifact(small_window_concat[1], tmp_path / "art")
    _strip_window_record(folder)
    assert Engine.load(folder).generate("Hi", 3).ids  # still opens with the right window
    edit_config(folder, window=window)
    with pytest.raises(ScredgeError, match="window"):
        load_ort(open_artifact(folder), device="cpu")


def test_shared_graph_without_the_window_record_is_refused(art):
    """The shared form (the default) has no probe (its feed is not the concat form's): a
    graph without the record is refused by name, never run with a guessed window."""
    folder, _ = art
    _strip_window_record(folder)
    with pytest.raises(ScredgeError, match="does not match the graph: window"):
        load_ort(open_artifact(folder), device="cpu")


def test_trt_entry_recorded_io_is_checked(small_window_artifact):
    """The TensorRT path checks the engine entry's recorded profiles against config.json,
    before TensorRT is imported. Oracle: profiles built by trt_profiles for another config."""
    from conftest import WINDOWED

    from scredge.runtime import trt_profiles as tp
    from scredge.runtime.graph_check import check_trt_entry

    good = {"file": "e", "profiles": tp.to_json(tp.profiles(WINDOWED, max_batch=2,
                                                            max_prefill=8))}
    check_trt_entry(good, WINDOWED, "f")
    for other in (WINDOWED.with_(n_layers=3), WINDOWED.with_(n_kv_heads=4),
                  WINDOWED.with_(window=8)):
        entry = {"file": "e", "profiles": tp.to_json(tp.profiles(other, max_batch=2,
                                                                 max_prefill=4))}
        with pytest.raises(ScredgeError, match="does not match the graph"):
            check_trt_entry(entry, WINDOWED, "f")
    for bad in (None, "x", [], [{"input_ids": "x"}]):
        with pytest.raises(ScredgeError, match="does not match the graph"):
            check_trt_entry({"file": "e", "profiles": bad}, WINDOWED, "f")


@pytest.fixture(scope="module")
def engine(small_window_artifact):
    return Engine.load(small_window_artifact[1])


@pytest.mark.parametrize("stop", ["", [""], ("",), ["a", ""], [None], [1.5], {"a": 1}, True])
def test_empty_and_malformed_stops_are_refused_alike(engine, stop):
    """Before: stop="" meant "no stop" while stop=[""] was refused."""
    with pytest.raises(ScredgeError, match="stop"):
        engine.generate("Hi", 4, stop=stop)


def test_a_stop_string_is_one_string_not_its_characters(engine):
    """Oracle: stop="xy" behaves exactly as stop=["xy"]; None as no stop."""
    kwargs = dict(temperature=0.9, seed=3)
    assert engine.generate("Hi", 12, stop="\n\n", **kwargs).ids == engine.generate(
        "Hi", 12, stop=["\n\n"], **kwargs).ids
    assert engine.generate("Hi", 6, stop=None, **kwargs).ids == engine.generate(
        "Hi", 6, **kwargs).ids


@pytest.mark.parametrize("seed", [-1, "x", 1.5, True, [1, 2], [-1], -(2**70)])
def test_bad_seeds_are_refused(engine, seed):
    """Before: numpy ValueError / TypeError tracebacks. A list is one seed per prompt (a
    batch's rows sample apart), so two seeds for one prompt, or a negative one, are bad."""
    with pytest.raises(ScredgeError, match="invalid seed"):
        engine.generate("Hi", 2, seed=seed)


def test_big_and_absent_seeds_run(engine):
    assert len(engine.generate("Hi", 2, seed=2**70).ids) == 2
    assert len(engine.generate("Hi", 2, seed=None).ids) == 2


@pytest.mark.parametrize("prompt", ["Hi \udc80", ["ok", "\ud800x"], "\udfff"])
def test_lone_surrogates_are_refused(engine, prompt):
    """Before: UnicodeEncodeError."""
    with pytest.raises(ScredgeError, match="not valid Unicode text"):
        engine.generate(prompt, 2)
    with pytest.raises(ScredgeError, match="not valid Unicode text"):
        engine.generate("Hi", 2, stop=["\udc80"])


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"top_p": "x"}, "top_p"), ({"repetition_penalty": "x"}, "repetition_penalty"),
    ({"top_k": True}, "top_k"), ({"temperature": "1"}, "temperature"),
])
def test_sampling_parameters_of_the_wrong_type(engine, kwargs, needle):
    """Before: TypeError from a comparison."""
    with pytest.raises(ScredgeError, match=needle):
        engine.generate("Hi", 2, **kwargs)


def test_prompt_ids_beyond_int64(engine):
    """Before: OverflowError from NumPy."""
    with pytest.raises(ScredgeError, match="outside the vocabulary"):
        engine.generate([1, 2**70], 2)
    assert engine.generator(stop_ids=[2**70, -1]).stop_ids.size == 0


def test_a_tiny_temperature_samples_the_argmax(engine):
    """Before: x / 1e-320 overflowed to inf and the sampler returned token 0. Oracle: the
    greedy result (a temperature this small leaves all the mass on the argmax)."""
    assert engine.generate("Hi", 6, temperature=1e-320).ids == engine.generate(
        "Hi", 6, temperature=0).ids


def test_cli_non_utf8_arguments(small_window_artifact, capsys, tmp_path, monkeypatch):
    """A prompt of non-UTF-8 bytes reaches Python as lone surrogates (os.fsdecode):
    before, UnicodeEncodeError; now exit status 2 naming the option."""
    import os

    monkeypatch.chdir(tmp_path)
    folder = str(small_window_artifact[1])
    before = snapshot(small_window_artifact[1])
    prompt = os.fsdecode(b"caf\xe9")
    assert main(["generate", folder, "--prompt", prompt, "--max-new-tokens", "2"]) == 2
    assert "--prompt is not valid UTF-8" in capsys.readouterr().err
    assert main(["generate", folder, "--prompt", "Hi", "--stop", prompt]) == 2
    assert "--stop is not valid UTF-8" in capsys.readouterr().err
    for args in (["--seed", "-1"], ["--temperature", "nan"], ["--top-p", "inf"]):
        assert main(["generate", folder, "--prompt", "Hi", "--max-new-tokens", "2",
                     *args]) == 2
        assert "error:" in capsys.readouterr().err
    # a folder whose name is not UTF-8 is a path like any other: refused only as missing
    assert main(["generate", os.fsdecode(b"/nonexistent/\xff"), "--prompt", "Hi"]) == 2
    assert "artifact folder not found" in capsys.readouterr().err
    assert snapshot(small_window_artifact[1]) == before and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"device": "tpu"}, "unknown device"), ({"threads": -1}, "thread count"),
    ({"threads": "2"}, "thread count"),
])
def test_bad_load_options(small_window_artifact, kwargs, needle):
    """Before: device='tpu' ran on the CPU silently; threads=-1 / '2' reached onnxruntime."""
    with pytest.raises(ScredgeError, match=needle):
        Engine.load(small_window_artifact[1], backend="ort", **kwargs)


def test_garbage_graph_with_recomputed_hashes(art):
    """Before: onnxruntime's own exception (InvalidProtobuf) as a traceback."""
    folder, _ = art
    (folder / "model.onnx").write_bytes(b"not a graph")
    rehash(folder)
    with pytest.raises(ScredgeError, match="onnxruntime cannot load model.onnx"):
        Engine.load(folder)


def test_golden_file_read_only_when_listed(art, capsys):
    """An unlisted parity/golden.npz (here a link to a file outside) is never read; a listed
    one that is not a golden file is a clean error."""
    folder, outside = art
    (folder / "parity").mkdir()
    (folder / "parity" / "golden.npz").symlink_to(outside)
    assert main(["parity", str(folder)]) == 2
    assert "symlink leading outside" in capsys.readouterr().err
    (folder / "parity" / "golden.npz").unlink()
    (folder / "parity" / "golden.npz").write_bytes(b"PK\x03\x04 not a zip")
    _set_manifest(folder, lambda m: m["files"].__setitem__(
        "parity/golden.npz", {"sha256": "0" * 64, "bytes": 0}))
    rehash(folder)
    assert main(["parity", str(folder)]) == 2
    assert "golden reference file is unreadable" in capsys.readouterr().err
