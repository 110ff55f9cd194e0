"""Nexus: distill a large teacher LLM into a small, fast student with a retrieval memory."""

__version__ = "0.1.0"
