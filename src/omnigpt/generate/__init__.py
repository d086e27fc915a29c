"""Generation: sampling filters as pure functions and KV-cache decoding as an iterator (``decode``), the decode step
compiled as one graph (``fast``), text streaming with stop strings (``text``), the checks of a forward's inputs at
the edge (``inputs``). The CLI, the demo and the server all consume the same iterator."""

from omnigpt.generate.decode import generate

__all__ = ["generate"]
