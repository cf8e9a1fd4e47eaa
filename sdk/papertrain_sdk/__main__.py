import sys

from papertrain_sdk.cli import main

sys.exit(main())
