"""``python -m edgepack`` is the ``edgepack`` command."""

from .cli import main

main()
