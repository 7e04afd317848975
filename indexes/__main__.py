import sys

from indexes.cli import main

sys.exit(main())
