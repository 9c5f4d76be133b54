import sys

from benchmarks.privacy.run import main

sys.exit(main())
