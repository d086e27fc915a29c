"""``omnigpt <command>``: a table of commands (``main``), each a thin module with ``add_arguments`` and ``run``."""
