"""`python -m bot`: the command line (see bot/cli.py)."""

import os
import sys

# One BLAS thread for the bot process: its matrix products are small (one agent's chunks),
# and on a loaded 2-core machine the default thread pool ran them 8x slower than one
# thread. Set before anything imports numpy; an operator's own setting wins.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from bot.cli import main  # noqa: E402  (after the environment above)

# Guarded: the PDF reading processes are spawned, and a spawned process imports the
# parent's main module; unguarded, each would run the command line again.
if __name__ == "__main__":
    sys.exit(main())
