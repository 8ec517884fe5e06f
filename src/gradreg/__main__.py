"""``python -m gradreg``: the gradreg command."""
from .entry import main

main()
