"""Generation: sampling filters as pure functions and KV-cache decoding as an iterator (``decode``), text streaming
with stop strings (``text``). The CLI, the demo and the server all consume the same iterator."""

from omnigpt.generate.decode import generate

__all__ = ["generate"]
