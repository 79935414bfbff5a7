import sys

from capbench.cli import main

sys.exit(main())
