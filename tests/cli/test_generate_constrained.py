"""`scredge generate --json-schema FILE | --regex R | --grammar FILE | --json-object` and
`--speculative ngram|FOLDER`. Oracles: json.loads + the schema, re.fullmatch, and the same
command without speculation (greedy ids identical); refusals exit 2 with the message."""

from __future__ import annotations

import json
import re

import pytest

from scredge.cli import main

pytest.importorskip("llguidance", reason="llguidance (ort extra) not installed")


def _run(capsys, *args) -> dict:
    capsys.readouterr()
    assert main(["generate", *map(str, args), "--greedy", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_generate_constrained_and_speculative(tiny_artifact, tmp_path, capsys):
    """Each constraint flag on `tiny`, and both speculative forms against plain greedy."""
    folder = tiny_artifact[1]
    schema = {"type": "object", "properties": {"k": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}},
              "required": ["k"], "additionalProperties": False}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    (tmp_path / "g.lark").write_text('start: "red" | "green"')
    out = _run(capsys, folder, "--prompt", "Once", "--max-new-tokens", 200,
               "--json-schema", tmp_path / "s.json")
    assert 0 <= json.loads(out["text"])["k"] <= 9
    out = _run(capsys, folder, "--prompt", "Once", "--regex", "[a-c]{4}")
    assert re.fullmatch("[a-c]{4}", out["text"])
    out = _run(capsys, folder, "--prompt", "Once", "--grammar", tmp_path / "g.lark")
    assert out["text"] in ("red", "green")
    plain = _run(capsys, folder, "--prompt", "abcabcabc", "--max-new-tokens", 30)
    for spec in ("ngram", folder):  # the model as its own draft
        fast = _run(capsys, folder, "--prompt", "abcabcabc", "--max-new-tokens", 30,
                    "--speculative", spec)
        assert fast["ids"] == plain["ids"] and fast["timing"]["speculative"]["proposed"] > 0


def test_generate_refusals(tiny_artifact, tmp_path, capsys):
    """An invalid schema, an invalid regex, a draft folder that does not exist."""
    (tmp_path / "bad.json").write_text('{"type": "objekt"}')
    for args in (["--json-schema", tmp_path / "bad.json"], ["--regex", "(["],
                 ["--speculative", tmp_path / "missing"]):
        capsys.readouterr()
        assert main(["generate", str(tiny_artifact[1]), "--prompt", "x",
                     *map(str, args)]) != 0
        assert "received" in capsys.readouterr().err
