"""Choosing the TensorRT module and repairing the TensorRT-for-RTX wheel. Oracles: the
installed modules (importlib) and the file system."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types

import pytest

from scredge.errors import ScredgeError
from scredge.plugins.trt import ENV_VAR, ensure_rtx_parser_link, load_trt


def test_unknown_choice_is_refused(monkeypatch):
    """Oracle: only `tensorrt` and `tensorrt_rtx` exist."""
    with pytest.raises(ScredgeError, match="unknown TensorRT module in prefer"):
        load_trt("tensorrt_lean")
    monkeypatch.setenv(ENV_VAR, "trt")
    with pytest.raises(ScredgeError, match=f"unknown TensorRT module in \\${ENV_VAR}"):
        load_trt()


@pytest.mark.parametrize("name", ["tensorrt", "tensorrt_rtx"])
def test_choice_is_honoured_or_names_the_install(monkeypatch, name):
    """Oracle: importlib.util.find_spec says whether the chosen module is installed."""
    monkeypatch.setenv(ENV_VAR, name)
    if importlib.util.find_spec(name) is not None:
        assert load_trt().__name__ == name
        return
    with pytest.raises(ScredgeError, match="no usable TensorRT can be imported") as info:
        load_trt()
    assert info.value.fix.startswith("pip install")


def test_link_is_created_once(tmp_path):
    """Oracle: the file system: the link resolves to the versioned library, and a second call
    leaves it as it is."""
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"ELF")
    link = ensure_rtx_parser_link(tmp_path)
    assert link == tmp_path / "libtensorrt_rtx.so"
    assert os.readlink(link) == "libtensorrt_rtx.so.1" and link.read_bytes() == b"ELF"
    assert ensure_rtx_parser_link(tmp_path) == link
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libtensorrt_rtx.so",
                                                          "libtensorrt_rtx.so.1"]


def test_missing_library_or_readonly_folder_is_explained(tmp_path, monkeypatch):
    """Oracle: the file system (no versioned library; a folder that refuses the link)."""
    with pytest.raises(ScredgeError, match="wheel is incomplete"):
        ensure_rtx_parser_link(tmp_path)
    (tmp_path / "libtensorrt_rtx.so.1").write_bytes(b"ELF")

    def refuse(src, dst):  # what a read-only site-packages does (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(dst))

    monkeypatch.setattr(os, "symlink", refuse)
    with pytest.raises(ScredgeError, match="cannot add the missing") as info:
        ensure_rtx_parser_link(tmp_path)
    assert info.value.fix.startswith("ln -s libtensorrt_rtx.so.1 ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["libtensorrt_rtx.so.1"]


def test_old_tensorrt_is_passed_over(monkeypatch):
    """Oracle: SCR_SPEC's plugin is an IPluginV3, which TensorRT has since 10.0 only."""
    old = types.ModuleType("tensorrt")
    old.__version__, old.__spec__ = "8.6.2", importlib.machinery.ModuleSpec("tensorrt", None)
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    monkeypatch.delenv(ENV_VAR, raising=False)
    with pytest.raises(ScredgeError, match="no usable TensorRT") as info:
        load_trt("tensorrt")
    assert "tensorrt 8.6.2: older than 10.0" in str(info.value)
    if importlib.util.find_spec("tensorrt_rtx") is not None:
        assert load_trt().__name__ == "tensorrt_rtx"
