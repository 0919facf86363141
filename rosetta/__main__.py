"""`python -m rosetta ...`: the `rosetta` command."""

import sys

from rosetta import cli

sys.exit(cli.console_main())
