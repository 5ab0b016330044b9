import sys

from sparse24.cli import main

sys.exit(main())
