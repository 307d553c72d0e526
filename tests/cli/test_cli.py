"""The `scredge` command. Oracles: the files it writes load back; errors exit 2 with the
project's message; --help lists only subcommands that work."""

from __future__ import annotations

import json

import pytest

from scredge.cli import build_parser, main
from scredge.config import SCRConfig

WORKING = {"info", "init", "export", "export-hf", "export-triton", "generate", "build", "parity",
           "bench", "train", "serve", "chat"}


def test_help_lists_only_working_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == WORKING
    out = capsys.readouterr().out
    assert all(name in out for name in WORKING)


def test_serve_refuses_a_missing_folder(tmp_path, capsys):
    """`scredge serve` on a folder that is not there: exit 2 with the project's message,
    before anything listens."""
    pytest.importorskip("starlette", reason="needs the serve extra")
    pytest.importorskip("uvicorn", reason="needs the serve extra")
    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert "scredge serve: error:" in capsys.readouterr().err


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["modules"]["numpy"] and set(report["presets"]) == {"tiny", "small"}


def test_init_writes_a_loadable_checkpoint(tmp_path, capsys):
    from scredge.ref import load_checkpoint

    out = tmp_path / "w.safetensors"
    assert main(["init", "--preset", "tiny", "--seed", "3", "--out", str(out)]) == 0
    assert SCRConfig.load(tmp_path / "w.config.json") == SCRConfig.preset("tiny")
    assert load_checkpoint(out).config == SCRConfig.preset("tiny")
    assert main(["init", "--out", str(out)]) == 2  # exists, no --force
    assert "--force" in capsys.readouterr().err
    assert main(["init", "--out", str(out), "--force"]) == 0


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["init", "--preset", "huge", "--out", "x.safetensors"], "unknown preset"),
        (["init", "--out", "weights.bin"], ".safetensors"),
        (["init", "--out", "/nonexistent-dir/w.safetensors"], "output folder does not exist"),
    ],
)
def test_init_bad_input(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("scredge init: error:") and needle in err
    assert not list(tmp_path.iterdir()), "a failed init wrote files"


def test_init_malformed_config(tmp_path, capsys):
    bad = tmp_path / "c.json"
    bad.write_text("{ nope")
    assert main(["init", "--config", str(bad), "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


@pytest.mark.parametrize("command,temperature,top_p", [("generate", 1.0, 1.0),
                                                       ("chat", 0.7, 0.9)])
def test_sampling_flags(command, temperature, top_p):
    """generate and chat read the same sampling flags, each with its own temperature and
    top-p defaults; --greedy is temperature 0. Oracle: the documented defaults and the
    values given on the command line."""
    from scredge.cli.common import sampling_kwargs

    parse = build_parser().parse_args
    assert sampling_kwargs(parse([command, "f"])) == dict(
        temperature=temperature, top_k=0, top_p=top_p, repetition_penalty=1.0, seed=0)
    given = parse([command, "f", "--temperature", "0.3", "--top-k", "5", "--top-p", "0.5",
                   "--repetition-penalty", "1.2", "--seed", "9"])
    assert sampling_kwargs(given) == dict(temperature=0.3, top_k=5, top_p=0.5,
                                          repetition_penalty=1.2, seed=9)
    assert sampling_kwargs(parse([command, "f", "--greedy", "--temperature", "2"])) == dict(
        temperature=0.0, top_k=0, top_p=top_p, repetition_penalty=1.0, seed=0)
