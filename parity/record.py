"""Golden references that travel: `scr_ref` run once (needs torch) on fixed inputs
(`scredge.ref.golden`), stored in the artifact folder so a device without torch (a Jetson) can
check any backend against it. Recording needs the folder's reference weights
(`--keep-reference`)."""

from __future__ import annotations

from dataclasses import replace

from scredge.artifact import add_to_manifest, verified_reference_weights
from scredge.contract import GOLDEN_FILE
from scredge.golden_file import Golden
from scredge.runtime.loaders import Artifact


def record_golden(artifact: Artifact, **kwargs) -> Golden:
    """Run the artifact's reference weights through `scr_ref` and return the golden data."""
    from scredge.ref import load_checkpoint
    from scredge.ref.golden import golden_from_model

    with verified_reference_weights(artifact.folder, artifact.manifest,
                                    "recording a golden reference") as path:
        model = load_checkpoint(path, artifact.config)  # the bytes the manifest lists
    return golden_from_model(model, artifact.reference_sha256, **kwargs)


def record_into(artifact: Artifact, **kwargs) -> Artifact:
    """Record and store `parity/golden.npz` in the folder, listed in the manifest; returns
    the artifact with that manifest (no need to re-read and re-hash the folder)."""
    golden = record_golden(artifact, **kwargs)
    golden.save(artifact.folder / GOLDEN_FILE)
    return replace(artifact, manifest=add_to_manifest(artifact.folder, [GOLDEN_FILE]))
