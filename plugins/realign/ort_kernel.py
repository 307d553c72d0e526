"""Build and find the onnxruntime custom-op library of `scr.Realign` (SCR_SPEC section 2, v3).

`realign_ort.cpp` registers the op for onnxruntime: a C++ CPU kernel (the formulas of
`realign_math.h`) and, in the CUDA build, the TensorRT plugin's own kernels
(`realign_kernel.cu`, the same `scr_realign_enqueue`) on onnxruntime's CUDA provider.

onnxruntime's C/C++ API headers are in no PyPI wheel. They are fetched once, at build time,
from npm (`com.github.asus4.onnxruntime`, MIT, which carries onnxruntime's own headers for
iOS; they are platform-neutral) with the ordinary `npm pack`, into a cache outside the
repository (`~/.cache/scredge/ort-headers/<version>`, or `$SCREDGE_ORT_INCLUDE_DIR` pointing
at any onnxruntime `include/` folder). Nothing fetched is committed or installed.

    python -m scredge.plugins.realign.ort_kernel [--cuda] [--out PATH]   # what `make kernels` runs

`main` is the one build entry: `make kernels` runs it, and so does the package build
(`tools/package_build.py`, for `pip install .` and `pip install -e .`). Libraries go to
`build/` beside these sources (`plugins/realign/build/` in a checkout, ignored by git;
`scredge/plugins/realign/build/` inside a wheel and so in site-packages) with a stamp
(`.json`) naming the sources' sha256 and the onnxruntime API version compiled against;
`find_library` only returns a library whose stamp matches the current sources. A skipped
`--if-possible` build leaves a stamp saying why, which the runtime's reason repeats.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from scredge.errors import ScredgeError

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "realign_ort.cpp"
SOURCES = (SOURCE, HERE / "realign_math.h", HERE / "realign_kernel.cu", HERE / "realign_kernel.h")
NPM_PACKAGE, NPM_VERSION = "com.github.asus4.onnxruntime", "0.4.9"
# one slice of the package's iOS xcframework: onnxruntime's public headers, as released
NPM_HEADERS = ("package/Plugins/iOS~/onnxruntime.xcframework/ios-arm64/"
               "onnxruntime.framework/Headers/")
ENV_INCLUDE = "SCREDGE_ORT_INCLUDE_DIR"  # use these onnxruntime headers instead of fetching
ENV_LIB = "SCREDGE_REALIGN_ORT_LIB"  # use this library instead of the default build
BUILD_COMMAND = "make kernels, or python -m scredge.plugins.realign.ort_kernel in an install"
CXX_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra",
             "-Wl,--no-undefined")  # no onnxruntime to link: an unresolved symbol fails here
CUDA_ARCHS = ("80", "86", "89", "90", "120")  # as the CMake build of the plugin (x86_64)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scredge"


def default_library(package: Path = HERE, cuda: bool = False) -> Path:
    """The library's place in a copy of this package's folder `package`: build/ beside the
    sources (in the source tree, or in a wheel's and so site-packages' copy)."""
    return package / "build" / ("libscr_realign_ort_cuda.so" if cuda else "libscr_realign_ort.so")


def library_path(cuda: bool = False) -> Path:
    """Where the runtime looks: $SCREDGE_REALIGN_ORT_LIB, else build/ beside the sources."""
    env = os.environ.get(ENV_LIB)
    return Path(env) if env else default_library(HERE, cuda)


def sources_digest() -> str:
    h = hashlib.sha256()
    for f in SOURCES:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def api_version(include: Path) -> int:
    """ORT_API_VERSION of the headers in `include`."""
    text = (include / "onnxruntime_c_api.h").read_text(errors="replace")
    found = re.search(r"^#define ORT_API_VERSION (\d+)", text, re.M)
    if not found:
        raise ScredgeError("not onnxruntime's C API header", received=str(include),
                           expected="onnxruntime_c_api.h defining ORT_API_VERSION")
    return int(found.group(1))


def fetch_headers() -> Path:
    """onnxruntime's API headers: $SCREDGE_ORT_INCLUDE_DIR, else the cache, else npm."""
    env = os.environ.get(ENV_INCLUDE)
    if env:
        if not (Path(env) / "onnxruntime_c_api.h").is_file():
            raise ScredgeError(f"${ENV_INCLUDE} holds no onnxruntime_c_api.h", received=env,
                               expected="an onnxruntime include/ folder")
        return Path(env)
    dest = cache_root() / "ort-headers" / NPM_VERSION
    if (dest / "SOURCE.txt").is_file():  # written last: the folder is complete
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise ScredgeError("cannot fetch onnxruntime's C/C++ API headers", received="no npm",
                           expected=f"npm (for {NPM_PACKAGE}@{NPM_VERSION}) or ${ENV_INCLUDE}",
                           fix=f"install npm, or set {ENV_INCLUDE} to an onnxruntime include/ "
                               "folder (Debian's libonnxruntime-dev: /usr/include/onnxruntime)")
    with tempfile.TemporaryDirectory() as tmp:
        tgz = _npm_pack(npm, Path(tmp))
        staging = Path(tempfile.mkdtemp(prefix=".ort-headers-", dir=_mkdir(dest.parent)))
        try:
            with tarfile.open(tgz) as tar:
                for member in tar:  # the headers only, by their base names
                    name = member.name.removeprefix(NPM_HEADERS)
                    if member.isfile() and member.name.startswith(NPM_HEADERS) and "/" not in name:
                        (staging / name).write_bytes(tar.extractfile(member).read())
            (staging / "SOURCE.txt").write_text(
                f"npm {NPM_PACKAGE}@{NPM_VERSION} (MIT), {NPM_HEADERS}; fetched by scredge's "
                f"ort_kernel.py for building realign_ort.cpp. onnxruntime's own headers.\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(staging, dest)  # whole or not at all
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return dest


def _npm_pack(npm: str, folder: Path) -> Path:
    """`npm pack` the headers' package into `folder`; its .tgz, or a ScredgeError."""
    fix = f"check network access to the npm registry, or set {ENV_INCLUDE}"
    try:
        done = subprocess.run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent"],
                              cwd=folder, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScredgeError("npm could not fetch onnxruntime's headers", received=str(exc)[:300],
                           fix=fix) from exc
    tgz = next(folder.glob("*.tgz"), None)
    if done.returncode != 0 or tgz is None:
        raise ScredgeError("npm could not fetch onnxruntime's headers",
                           received=(done.stderr or done.stdout)[-600:],
                           expected=f"{NPM_PACKAGE}@{NPM_VERSION} from the npm registry", fix=fix)
    return tgz


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def compile_command(out: Path, include: Path, cuda: bool, api: int | None) -> list[str]:
    """g++ for the CPU library; nvcc (realign_kernel.cu + realign_ort.cpp) for the CUDA one."""
    defines = [f"-DSCR_REALIGN_ORT_API={api}"] if api is not None else []
    if not cuda:
        return [*find_cxx(), *CXX_FLAGS, *defines, "-I", str(HERE), "-isystem", str(include),
                str(SOURCE), "-o", str(out)]
    from scredge.plugins.realign.build_kernels import _require_nvcc, gencode_flags, select_archs

    nvcc = _require_nvcc()
    archs, _ = select_archs(CUDA_ARCHS, nvcc)
    host = ",".join(f for f in CXX_FLAGS if f.startswith(("-f", "-W")) and "," not in f)
    return [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", host, "-Xlinker",
            "--no-undefined", *gencode_flags(archs), "--cudart", "static",
            "-DSCR_REALIGN_ORT_CUDA", *defines, "-I", str(HERE), "-isystem", str(include),
            str(HERE / "realign_kernel.cu"), str(SOURCE), "-o", str(out)]


def find_cxx() -> list[str]:
    """$CXX (program and its own arguments) when set, else g++ or c++ from PATH. A $CXX that
    names no program is refused, not replaced: it was asked for."""
    env = os.environ.get("CXX", "").strip()
    words = shlex.split(env) if env else []
    found = shutil.which(words[0]) if words else shutil.which("g++") or shutil.which("c++")
    if found is None:
        raise ScredgeError("no C++ compiler to build the Realign onnxruntime kernel",
                           received=f"CXX={env}: not found" if env else "no g++ / c++ on PATH",
                           expected="g++ >= 9 or clang++",
                           fix="apt install g++, or set CXX (the runtime uses the function body "
                               "meanwhile)")
    return [found, *words[1:]]


def build_library(out: Path | None = None, cuda: bool = False, api: int | None = None) -> Path:
    """Compile the library into `out` (default `library_path(cuda)`), whole or not at all,
    with its stamp. `api` asks onnxruntime for another API version than the headers' (tests
    use it to build a library the installed onnxruntime must refuse)."""
    if not cuda:
        find_cxx()  # no compiler: say so before fetching anything
    include = fetch_headers()
    out = Path(out) if out else library_path(cuda)
    _mkdir(out.parent)
    from scredge.plugins.realign.build_kernels import compile_atomically

    cmd = compile_atomically(out, lambda tmp: compile_command(tmp, include, cuda, api),
                             "building the Realign onnxruntime kernel failed")
    stamp = {"sources_sha256": sources_digest(), "ort_api": api or api_version(include),
             "headers": str(include), "cuda": cuda, "command": cmd[0]}
    stamp_path(out).write_text(json.dumps(stamp, indent=1) + "\n")
    return out


def stamp_path(lib: Path) -> Path:
    return lib.with_suffix(".json")


def read_stamp(lib: Path) -> dict:
    try:
        return json.loads(stamp_path(lib).read_text())
    except (OSError, ValueError):
        return {}


def is_current(lib: Path) -> bool:
    """`lib` is there and its stamp names the current sources."""
    return lib.is_file() and read_stamp(lib).get("sources_sha256") == sources_digest()


def find_library(cuda: bool = False) -> tuple[Path | None, str]:
    """(the built library, '') when it is there and built from the current sources, else
    (None, why not). $SCREDGE_REALIGN_ORT_LIB is taken as it is (no stamp needed)."""
    lib = library_path(cuda)
    if not lib.is_file():
        skipped = read_stamp(lib).get("skipped")
        return None, (f"no kernel library at {lib}"
                      + (f"; its build was skipped: {skipped}" if skipped else "")
                      + f"; build it: {BUILD_COMMAND}")
    if os.environ.get(ENV_LIB):
        return lib, ""
    if not is_current(lib):
        return None, f"{lib.name} was built from other sources (rebuild: {BUILD_COMMAND})"
    return lib, ""


def skip_reason(err: ScredgeError) -> str:
    """One line for a build that could not be done: what, and the telling line of what was
    received (a compiler's first error line, npm's first line)."""
    lines = [ln.strip() for ln in str(err.received or "").splitlines() if ln.strip()]
    telling = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
    return f"{err.what} ({telling[:240]})" if telling else err.what


def record_skip(lib: Path, reason: str) -> None:
    """No library of ours at `lib`, and a stamp saying why (the runtime's reason repeats it)."""
    try:
        if read_stamp(lib):  # an older build of ours, not of these sources; others' files stay
            lib.unlink(missing_ok=True)
        _mkdir(lib.parent)
        stamp_path(lib).write_text(json.dumps({"skipped": reason}, indent=1) + "\n")
    except OSError:  # a read-only place: the printed line is the record
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scredge.plugins.realign.ort_kernel",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", action="store_true", help="the CUDA build (nvcc), CPU op included")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"library to write (default {default_library()})")
    ap.add_argument("--if-possible", action="store_true",
                    help="when it cannot be built (no compiler, no headers, a failed compile): "
                         "exit 0 with one line saying why, kept in a stamp beside the library")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    # the default place, never $SCREDGE_REALIGN_ORT_LIB's: that one is the user's to replace
    target = args.out or default_library(HERE, args.cuda)
    if is_current(target) and not args.force:
        print(f"{target} is up to date (onnxruntime API {read_stamp(target).get('ort_api')})")
        return 0
    try:
        out = build_library(target, cuda=args.cuda)
    except ScredgeError as err:
        if not args.if_possible:
            print(f"error: {err}")
            return 1
        reason = skip_reason(err)
        record_skip(target, reason)
        print(f"skipped: {reason}; the runtime runs scr.Realign as the graph's function body")
        return 0
    print(f"wrote {out} (onnxruntime API {read_stamp(out)['ort_api']}"
          f"{', CPU + CUDA' if args.cuda else ', CPU'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
