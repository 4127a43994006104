import sys

from oat_edge.cli import main

sys.exit(main())
