"""`python -m launch COMMAND ...` is the `dpiqa` console run from the repository."""

from .console import main

main()
