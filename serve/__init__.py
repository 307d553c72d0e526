"""`scredge serve`: an OpenAI-compatible HTTP server with continuous batching.

    from scredge.serve import ServerConfig, ServerThread, serve
    serve("artifacts/tiny", port=8000)            # foreground, until SIGINT/SIGTERM

    app = ray_app("artifacts/tiny", replicas=2)   # the same server as a Ray Serve application

Needs the `serve` extra (starlette, uvicorn); `ray_app` the `ray` extra. Never imports the
CLI.
"""

from scredge.serve.app import ServerConfig, create_app
from scredge.serve.ray_deploy import ray_app
from scredge.serve.server import ServerThread, serve

__all__ = ["ServerConfig", "ServerThread", "create_app", "ray_app", "serve"]
