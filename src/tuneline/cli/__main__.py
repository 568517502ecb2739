"""`python -m tuneline.cli` = the `tuneline` command."""

from . import main

main()
