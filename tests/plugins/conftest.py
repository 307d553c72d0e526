"""Fixtures shared by the TensorRT-for-RTX test modules."""

from __future__ import annotations

import pytest

from scredge.errors import ScredgeError


@pytest.fixture(scope="module")
def rtx():
    """TensorRT for RTX ready to parse plugin nodes, with the Python Realign registered."""
    trt = pytest.importorskip(
        "tensorrt_rtx", reason="TensorRT for RTX is not installed (pip install tensorrt-rtx-cu13)")
    from scredge.plugins.realign.python_plugin import register
    from scredge.plugins.trt import ensure_rtx_parser_link

    try:
        # The TensorRT-for-RTX wheel lacks the unversioned libtensorrt_rtx.so that the
        # parser dlopens when it imports a plugin node; without this link the first
        # plugin-mode parse aborts the whole pytest process ("terminate called without an
        # active exception") instead of failing a test.
        ensure_rtx_parser_link()
    except ScredgeError as exc:
        pytest.skip(f"cannot repair the TensorRT for RTX wheel: {exc}")
    register(trt)
    return trt
