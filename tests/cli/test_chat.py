"""`scredge chat`: the REPL over a folder's chat template. Oracle: Engine.chat (greedy) on
the same conversation, turn by turn, the history including the model's own replies; /reset
starting it again; Ctrl-D (end of input) leaving cleanly; a folder without a template
refused before the prompt."""

from __future__ import annotations

import io

import hf_models
import pytest

from scredge.cli import main


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory, bpe_tokenizer, hf_tokenizer_dir):
    """A random 2-layer llama with the session's BPE and ChatML template, exported plain."""
    from scredge.export.pipeline import export_artifact
    from scredge.export.sources import from_llama

    root = tmp_path_factory.mktemp("chat")
    eos = bpe_tokenizer.token_to_id(hf_models.EOS)
    model = hf_models.build_model("llama", bpe_tokenizer.get_vocab_size(), seed=2,
                                  eos_ids=[eos])
    model.save_pretrained(root / "hf")
    hf_models.save_tokenizer(root / "hf", bpe_tokenizer)
    src = from_llama(root / "hf", scr_layers=())
    return export_artifact(src.model, root / "art", source=src.description,
                           tokenizer=src.tokenizer)


def _chat(folder, lines, monkeypatch, capsys) -> list[str]:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{x}\n" for x in lines)))
    assert main(["chat", str(folder), "--greedy", "--max-new-tokens", "12"]) == 0
    out = capsys.readouterr().out
    return [line[len("model> "):] for line in out.splitlines() if line.startswith("model> ")]


def test_turns_equal_engine_chat(chat_folder, monkeypatch, capsys):
    from scredge.runtime import Engine

    replies = _chat(chat_folder, ["Hello there", "Tell me more", "/reset", "Hello there"],
                    monkeypatch, capsys)  # then end of input: Ctrl-D
    engine = Engine.load(chat_folder, device="cpu")
    history: list[dict] = []
    want = []
    for text in ("Hello there", "Tell me more"):
        history.append({"role": "user", "content": text})
        reply = engine.chat(history, max_new_tokens=12, temperature=0.0).text
        want.append(reply)
        history.append({"role": "assistant", "content": reply.strip()})
    want.append(want[0])  # after /reset the first turn again
    assert [r.strip() for r in replies] == [w.strip() for w in want]
    assert len(replies) == 3


def test_quit_and_blank_lines(chat_folder, monkeypatch, capsys):
    assert _chat(chat_folder, ["", "   ", "/quit", "never sent"], monkeypatch, capsys) == []


def test_a_folder_without_a_template_is_refused(small_window_artifact, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hi\n"))
    assert main(["chat", str(small_window_artifact[1])]) == 2
    err = capsys.readouterr().err
    assert "chat template" in err and "model> " not in capsys.readouterr().out
