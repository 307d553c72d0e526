"""The runtime must import without torch. Oracle: a child interpreter in which
`import torch` is made impossible; importing every scredge package there must succeed."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import scredge, scredge.config, scredge.sampling, scredge.cli
import scredge.runtime, scredge.export, scredge.plugins, scredge.ref
from scredge.runtime import Sampler, SamplingParams
import numpy as np
ids = Sampler(SamplingParams(temperature=0.7), seed=1)(np.zeros((2, 8)))
assert ids.shape == (2,)
try:
    scredge.ref.build_model
except scredge.ScredgeError as exc:
    assert "scredge[ref]" in str(exc), exc
else:
    raise AssertionError("scredge.ref.build_model resolved without torch")
print("ok")
"""


def test_runtime_imports_without_torch():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
