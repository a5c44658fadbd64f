import sys

from edge_pse.cli import main

sys.exit(main())
