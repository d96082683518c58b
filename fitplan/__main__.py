"""`python -m fitplan` is the `fitplan` command."""
from .cli import main

main()
