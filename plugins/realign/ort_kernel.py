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

Libraries go to `plugins/realign/build/` (ignored by git) beside a stamp (`.json`) naming
the sources' sha256 and the onnxruntime API version compiled against; `find_library` only
returns a library whose stamp matches the current sources.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
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
BUILD_COMMAND = "make kernels"
CXX_FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra",
             "-Wl,--no-undefined")  # no onnxruntime to link: an unresolved symbol fails here
CUDA_ARCHS = ("80", "86", "89", "90", "120")  # as the CMake build of the plugin (x86_64)


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "scredge"


def library_path(cuda: bool = False) -> Path:
    """Where the runtime looks: $SCREDGE_REALIGN_ORT_LIB, else build/ beside the sources."""
    env = os.environ.get(ENV_LIB)
    if env:
        return Path(env)
    return HERE / "build" / ("libscr_realign_ort_cuda.so" if cuda else "libscr_realign_ort.so")


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
        cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
        if cxx is None:
            raise ScredgeError("no C++ compiler to build the Realign onnxruntime kernel",
                               received="no g++ / c++ on PATH", expected="g++ >= 9 or clang++",
                               fix="apt install g++ (the runtime uses the function body meanwhile)")
        return [cxx, *CXX_FLAGS, *defines, "-I", str(HERE), "-isystem", str(include),
                str(SOURCE), "-o", str(out)]
    from scredge.plugins.realign.build_kernels import _require_nvcc, gencode_flags, select_archs

    nvcc = _require_nvcc()
    archs, _ = select_archs(CUDA_ARCHS, nvcc)
    host = ",".join(f for f in CXX_FLAGS if f.startswith(("-f", "-W")) and "," not in f)
    return [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", host, "-Xlinker",
            "--no-undefined", *gencode_flags(archs), "--cudart", "static",
            "-DSCR_REALIGN_ORT_CUDA", *defines, "-I", str(HERE), "-isystem", str(include),
            str(HERE / "realign_kernel.cu"), str(SOURCE), "-o", str(out)]


def build_library(out: Path | None = None, cuda: bool = False, api: int | None = None) -> Path:
    """Compile the library into `out` (default `library_path(cuda)`), whole or not at all,
    with its stamp. `api` asks onnxruntime for another API version than the headers' (tests
    use it to build a library the installed onnxruntime must refuse)."""
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


def find_library(cuda: bool = False) -> tuple[Path | None, str]:
    """(the built library, '') when it is there and built from the current sources, else
    (None, why not). $SCREDGE_REALIGN_ORT_LIB is taken as it is (no stamp needed)."""
    lib = library_path(cuda)
    if not lib.is_file():
        return None, f"no kernel library at {lib} (build it: {BUILD_COMMAND})"
    if os.environ.get(ENV_LIB):
        return lib, ""
    if read_stamp(lib).get("sources_sha256") != sources_digest():
        return None, f"{lib.name} was built from other sources (rebuild: {BUILD_COMMAND})"
    return lib, ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scredge.plugins.realign.ort_kernel",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--cuda", action="store_true", help="the CUDA build (nvcc), CPU op included")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--if-possible", action="store_true",
                    help="exit 0 with the reason when no compiler or headers are available")
    ap.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = ap.parse_args(argv)
    current, _ = find_library(args.cuda)
    if current is not None and args.out is None and not args.force:
        print(f"{current} is up to date (onnxruntime API {read_stamp(current).get('ort_api')})")
        return 0
    try:
        out = build_library(args.out, cuda=args.cuda)
    except ScredgeError as err:
        print(f"{'skipped' if args.if_possible else 'error'}: {err}")
        return 0 if args.if_possible else 1
    print(f"wrote {out} (onnxruntime API {read_stamp(out)['ort_api']}"
          f"{', CPU + CUDA' if args.cuda else ', CPU'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
