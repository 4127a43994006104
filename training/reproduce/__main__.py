import sys

from oat_edge.training.reproduce.cli import main

sys.exit(main())
