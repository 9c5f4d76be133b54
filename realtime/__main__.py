"""`python -m realtime` is the same as the `dancecam` command."""

import sys

from realtime.cli.main import main

sys.exit(main())
