"""The ``deepseek`` command line (``deepseek --help``)."""
