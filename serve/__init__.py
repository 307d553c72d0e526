"""`scredge serve`: an OpenAI-compatible HTTP server with continuous batching.

    from scredge.serve import ServerConfig, ServerThread, serve
    serve("artifacts/tiny", port=8000)            # foreground, until SIGINT/SIGTERM

Needs the `serve` extra (starlette, uvicorn). Never imports the CLI.
"""

from scredge.serve.app import ServerConfig, create_app
from scredge.serve.server import ServerThread, serve

__all__ = ["ServerConfig", "ServerThread", "create_app", "serve"]
