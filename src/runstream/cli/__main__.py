"""`python -m runstream.cli`: the same command as `runstream`."""

import sys

from runstream.cli import main

sys.exit(main())
