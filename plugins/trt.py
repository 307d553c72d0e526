"""One way to import TensorRT: `tensorrt` (10.0+, JetPack 6's 10.3 included) or TensorRT for
RTX (`tensorrt_rtx`), whose ONNX parser, builder and IPluginV3 Python classes have the same
names (RTX networks are always strongly typed, and its registry lacks the IPluginV2-era
`get_plugin_creator`).

`load_trt()` picks the module (argument, else `$SCREDGE_TRT`, else whichever is installed,
`tensorrt` first); `ensure_rtx_parser_link()` repairs the TensorRT-for-RTX wheel so that its
ONNX parser can import plugin nodes at all. Both import lazily: nothing here runs at
`import scredge.plugins` time.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path
from types import ModuleType

from scredge.errors import ScredgeError

ENV_VAR = "SCREDGE_TRT"
TRT_MODULES = ("tensorrt", "tensorrt_rtx")  # search order when nothing is preferred
# The only modules an engine's manifest entry may name for registering its plugins: an
# artifact folder is data, and data never chooses what Python code is imported.
PLUGIN_MODULES = ("scredge.plugins.realign.python_plugin",)
MIN_TENSORRT = (10, 0)  # IPluginV3 and strongly typed networks; JetPack 6 has 10.3
_INSTALL = {
    "tensorrt": "pip install 'scredge[trt]' (TensorRT 10.x from NVIDIA's index; "
                "on Jetson it comes with JetPack 6)",
    "tensorrt_rtx": "pip install tensorrt-rtx-cu13 (or tensorrt-rtx-cu12)",
}
EXPECTED = {"tensorrt": "tensorrt >= 10.0 (JetPack 6.1+ ships 10.3)",
            "tensorrt_rtx": "tensorrt_rtx (TensorRT for RTX)"}


def load_trt(prefer: str | None = None) -> ModuleType:
    """Import and return `tensorrt` or `tensorrt_rtx`.

    `prefer` (or the environment variable SCREDGE_TRT) names the one to use and makes it
    mandatory; without either, the first usable module of `TRT_MODULES` wins (a `tensorrt`
    older than 10.0 is passed over).
    """
    choice = prefer if prefer is not None else os.environ.get(ENV_VAR) or None
    if choice is not None and choice not in TRT_MODULES:
        source = "prefer" if prefer is not None else f"${ENV_VAR}"
        raise ScredgeError(f"unknown TensorRT module in {source}", received=repr(choice),
                           expected=f"one of {list(TRT_MODULES)} or unset")
    wanted = [choice] if choice else list(TRT_MODULES)
    failures = []
    for name in wanted:
        if importlib.util.find_spec(name) is None:
            failures.append(f"{name}: not installed")
            continue
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as exc:  # a wheel whose shared libraries do not load
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        version = getattr(module, "__version__", "")
        if name == "tensorrt" and _older_than(version, MIN_TENSORRT):
            failures.append(f"tensorrt {version}: older than 10.0, it has no IPluginV3")
            continue
        return module
    fix = "; or ".join(_INSTALL[n] for n in wanted)
    if choice is not None and prefer is None:
        fix += f"; or unset {ENV_VAR} to take whichever is installed"
    raise ScredgeError("no usable TensorRT can be imported", received="; ".join(failures),
                       expected=" or ".join(EXPECTED[n] for n in wanted), fix=fix)


def _older_than(version: str, minimum: tuple[int, int]) -> bool:
    try:
        return tuple(int(p) for p in version.split(".")[:2]) < minimum
    except ValueError:  # a development build: let the API speak for itself
        return False


def ensure_rtx_parser_link(folder: str | Path | None = None) -> Path | None:
    """Create `tensorrt_rtx_libs/libtensorrt_rtx.so -> libtensorrt_rtx.so.1` if missing.

    Why: the TensorRT-for-RTX wheels ship only the versioned `libtensorrt_rtx.so.1`, but the
    ONNX parser, when it meets a node it must import as a plugin, `dlopen`s the unversioned
    `libtensorrt_rtx.so` (found through its `$ORIGIN` rpath). Without the link that fails
    inside the library and the whole process aborts with "terminate called without an
    active exception": no Python exception, no message naming the cause. The link is
    created under a temporary name and renamed into place, so concurrent processes (pytest
    workers, parallel builds) never see a half-made link.

    `folder` defaults to the installed `tensorrt_rtx_libs` package. Returns the link's
    path, or None when that wheel is not installed (a tarball install ships the
    unversioned name itself). Raises ScredgeError when the folder is not writable, with
    the command that fixes it.
    """
    if folder is None:
        spec = importlib.util.find_spec("tensorrt_rtx_libs")
        if spec is None or not spec.submodule_search_locations:
            return None
        folder = next(iter(spec.submodule_search_locations))
    folder = Path(folder)
    link, target = folder / "libtensorrt_rtx.so", "libtensorrt_rtx.so.1"
    if link.exists():  # a link that resolves, or a real file from a fixed wheel
        return link
    if not (folder / target).is_file():
        raise ScredgeError("the TensorRT for RTX wheel is incomplete",
                           received=f"no {target} in {folder}",
                           expected=f"{target} from the tensorrt-rtx-cu13-libs (or cu12) wheel",
                           fix="pip install --force-reinstall tensorrt-rtx-cu13-libs")
    tmp = folder / f".libtensorrt_rtx.so.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        if tmp.is_symlink():
            tmp.unlink()
        raise ScredgeError(
            "cannot add the missing libtensorrt_rtx.so link to the TensorRT for RTX wheel "
            "(without it, parsing an ONNX model with plugin nodes aborts the process)",
            received=f"{type(exc).__name__}: {exc}",
            expected=f"a writable {folder}",
            fix=f"ln -s {target} {link}  (once, as the owner of the environment)") from exc
    return link
