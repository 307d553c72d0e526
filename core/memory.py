"""The memory checks before work starts (`scredge export`, `scredge train`): the memory
available now and the one refusal of an estimate above it (the estimate and its parts, the
memory available, the command's fix, and `--ignore-memory-check`, which both commands take).
Each command estimates its own need (export/memory_check.py, scr_ref/train_memory.py)."""

from __future__ import annotations

from pathlib import Path

from scredge.errors import ScredgeError

GIB = 1 << 30


def available_cpu_memory() -> int | None:
    """/proc/meminfo's MemAvailable in bytes; None where it cannot be read (then nothing is
    checked)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def refuse_over_memory(work: str, parts: dict[str, int], available: int | None,
                       available_from: str, fix: str, ignore_note: str = "") -> None:
    """Raise the refusal when the sum of `parts` (bytes by what holds them) exceeds
    `available` bytes (None: not checked). `work` names what would run ("the export"),
    `available_from` where `available` was read, `fix` the command's own remedies;
    `ignore_note` says what --ignore-memory-check risks."""
    total = sum(parts.values())
    if available is None or total <= available:
        return
    detail = " + ".join(f"{size / GIB:.2f} GiB {name}" for name, size in parts.items())
    raise ScredgeError(f"{work} would need more memory than is available",
                       received=f"estimate {total / GIB:.2f} GiB: {detail}",
                       expected=f"at most {available / GIB:.2f} GiB ({available_from})",
                       fix=f"{fix}, or pass --ignore-memory-check{ignore_note}")
