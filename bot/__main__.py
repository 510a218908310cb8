"""`python -m bot`: the command line (see bot/cli.py)."""

import sys

from bot.cli import main

# Guarded: the PDF reading processes are spawned, and a spawned process imports the
# parent's main module; unguarded, each would run the command line again.
if __name__ == "__main__":
    sys.exit(main())
