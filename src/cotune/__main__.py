"""``python -m cotune ...`` runs the ``cotune`` command line."""

import sys

from cotune.cli.main import main

sys.exit(main())
