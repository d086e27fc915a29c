"""Thin ``omnigpt <command>`` modules: each parses arguments and calls the library (``add_arguments`` + ``run``)."""
