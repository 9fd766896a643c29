"""MARS orchestrator: early-stopped parallel test-time scaling of LLM reasoning."""

__version__ = "0.1.0"
