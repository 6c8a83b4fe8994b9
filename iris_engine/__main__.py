"""`python -m iris_engine`: the `iris` command line."""

import sys

from iris_engine.cli import main

sys.exit(main())
