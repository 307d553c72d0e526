"""Serving fixtures: one exported micro model (W = 16, so short requests run past the
window and joins trim padded caches) and a server on a free local port, per session."""

from __future__ import annotations

import pytest
from serving import MODEL

from scredge.config import SCRConfig

pytest.importorskip("starlette", reason="needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="needs the serve extra (starlette, uvicorn)")
openai = pytest.importorskip("openai", reason="the tests speak through the official client")

SERVED = SCRConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   window=16, scr_layers=(0, 1))


@pytest.fixture(scope="session")
def served_folder(tmp_path_factory):
    from scredge.export.pipeline import export_artifact
    from scredge.ref import build_model

    model = build_model(SERVED, seed=3, gamma=0.5, std=0.08)
    out = tmp_path_factory.mktemp("serve") / MODEL
    export_artifact(model, out)
    return out


@pytest.fixture(scope="session")
def engine(served_folder):
    from scredge.runtime import Engine

    eng = Engine.load(served_folder, backend="ort", device="cpu")
    yield eng
    eng.close()


@pytest.fixture(scope="session")
def server(engine):
    from scredge.serve import ServerConfig, ServerThread

    with ServerThread(engine, ServerConfig(MODEL, max_batch=16)) as srv:
        yield srv


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0,
                         timeout=60)

