"""``python -m ltcompress`` (and ``torchrun -m ltcompress``)."""

from ltcompress.cli import main

main()
