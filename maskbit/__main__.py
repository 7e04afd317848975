import sys

from maskbit.cli import main

sys.exit(main())
