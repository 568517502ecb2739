"""`python -m tuneline` = the `tuneline` command."""

from .cli import main

main()
