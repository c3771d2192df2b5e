import sys

from runstream.cli import main

sys.exit(main())
