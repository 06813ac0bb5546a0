"""The interactive explorer: "the deep learning revolution" told by a real, loaded model.

``alexnet explore --checkpoint CK [--data DIR]`` serves it; :func:`create_app` builds the
FastAPI app (for tests or embedding) and :func:`serve` runs it with uvicorn.
"""

from alexnet.explorer.app import create_app, serve

__all__ = ["create_app", "serve"]
