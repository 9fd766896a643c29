"""Command-line front ends: ``mars ask``, ``mars demo``, ``mars serve``; the HTTP client they share and the
composition of the API with its embedded workers (``service.py``). This is the top layer: it may import
``orchestrator.api`` and ``workers``, and nothing imports it but ``orchestrator.cli``."""
