"""`python -m hfddpm`: the `hfddpm` command."""

import sys

from .cli import main

sys.exit(main())
