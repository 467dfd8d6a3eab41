"""``python -m conformance`` is the ``mailharness`` command."""

from .cli import main

main()
