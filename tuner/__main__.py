"""``python -m dstune`` is the ``dstune`` command."""

from .cli import main

main()
