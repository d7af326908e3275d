import sys

from pocketseg_core.cli import main

sys.exit(main())
