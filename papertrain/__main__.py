"""`python -m papertrain ...`: the `papertrain` command."""

import sys

from papertrain.cli import main

sys.exit(main())
