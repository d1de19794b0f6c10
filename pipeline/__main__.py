"""`python -m pipeline` is the same as the `bneck` console script."""

import sys

from pipeline.cli.main import main

sys.exit(main())
