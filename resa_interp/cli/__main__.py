"""`python -m resa_interp.cli` (and `accelerate launch -m resa_interp.cli`): the console entry point."""

from resa_interp.cli.app import main

main()
