"""``python -m gradreg.cli``: the gradreg command."""
from . import main

main()
