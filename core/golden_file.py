"""The golden file `parity/golden.npz`: what `scredge parity --record` stores (see
`scredge.parity.record`; the export records it itself into a folder without the reference
weights, `scredge.ref.golden`) and every backend is compared against, torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scredge.arrays_file import check_array, open_arrays, save_arrays
from scredge.errors import ScredgeError


@dataclass
class Golden:
    weights_sha256: str  # of the reference weights (model.safetensors): which model this is for
    config: dict
    steps_ids: list[np.ndarray]  # per call [B,T] int64: prefill, then decode tokens
    steps_logits: list[np.ndarray]  # per call [B,T,V]
    steps_hidden: list[np.ndarray]  # per call [L,B,T,D]: x after each layer
    final_state: dict[str, np.ndarray]  # present.* / scr_present.* after the last call
    op_inputs: list[list[np.ndarray]]  # Realign cases: the 8 inputs
    op_outputs: list[list[np.ndarray]]  # and the reference's 3 outputs
    kappa: float
    greedy_prompt: np.ndarray  # [T]
    greedy_ids: np.ndarray  # [N] the reference's free-running greedy tokens

    def save(self, path: Path) -> None:
        meta = {"weights_sha256": self.weights_sha256, "config": self.config,
                "steps": len(self.steps_ids), "op_cases": len(self.op_inputs),
                "kappa": self.kappa, "state": sorted(self.final_state)}
        arrays: dict[str, np.ndarray] = {"greedy_prompt": self.greedy_prompt,
                                         "greedy_ids": self.greedy_ids}
        for k, (ids, lg, hid) in enumerate(zip(self.steps_ids, self.steps_logits,
                                               self.steps_hidden)):
            arrays[f"step{k}.ids"], arrays[f"step{k}.logits"] = ids, lg
            arrays[f"step{k}.hidden"] = hid
        for name, value in self.final_state.items():
            arrays[f"state.{name}"] = value
        for k, (ins, outs) in enumerate(zip(self.op_inputs, self.op_outputs)):
            for j, a in enumerate(ins):
                arrays[f"op{k}.in{j}"] = a
            for j, a in enumerate(outs):
                arrays[f"op{k}.out{j}"] = a
        save_arrays(path, meta, arrays)

    @classmethod
    def load(cls, path: Path, data: bytes | None = None) -> Golden:
        """The golden file at `path`; in an artifact, `data` is its verified bytes
        (`parity.run.listed_golden`), so what is parsed is what the manifest lists."""
        fix = f"re-record it: scredge parity {path.parent.parent} --record"
        with open_arrays(path, "golden reference file", fix, data) as (meta, z):
            n, ops = meta["steps"], meta["op_cases"]
            vocab = meta["config"]["vocab_size"]
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                       for v in (n, ops, vocab)) or not isinstance(meta["state"], list):
                raise TypeError("steps, op_cases and config.vocab_size must be integers, "
                                "state a list")
            ids = [check_array(z, f"step{k}.ids", 2, "i", (0, vocab)) for k in range(n)]
            logits = [check_array(z, f"step{k}.logits", 3, "f") for k in range(n)]
            if any(lg.shape != (*i.shape, vocab) for i, lg in zip(ids, logits)):
                raise ValueError(f"step logits are not [B, T, {vocab}] for their ids")
            return cls(
                meta["weights_sha256"], meta["config"], ids, logits,
                [check_array(z, f"step{k}.hidden", 4, "f") for k in range(n)],
                {name: z[f"state.{name}"] for name in meta["state"]},
                [[z[f"op{k}.in{j}"] for j in range(8)] for k in range(ops)],
                [[z[f"op{k}.out{j}"] for j in range(3)] for k in range(ops)],
                meta["kappa"], check_array(z, "greedy_prompt", 1, "i", (0, vocab)),
                check_array(z, "greedy_ids", 1, "i", (0, vocab)))

    def check_matches(self, artifact) -> None:
        """Refuse a golden file recorded for other weights than `artifact`'s (a
        runtime.loaders.Artifact: its `reference_sha256`, from the manifest's entry for the
        kept weights or from config.json)."""
        folder, actual = artifact.folder, artifact.reference_sha256 or "none recorded"
        if actual != self.weights_sha256:
            raise ScredgeError(
                "the golden file was recorded for another model",
                received=f"golden for weights sha256 {self.weights_sha256[:16]}...",
                expected=f"this folder's weights, sha256 {actual[:16]}...",
                fix=f"re-record it: scredge parity {folder} --record")

