import sys

from cdn.cli import main

sys.exit(main())
