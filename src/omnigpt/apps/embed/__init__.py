"""Sentence and token features from a text encoder (all-MiniLM-L6-v2): ``pipeline("feature-extraction")``."""
