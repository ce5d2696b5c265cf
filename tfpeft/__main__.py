import sys

from tfpeft.cli import main

sys.exit(main())
