"""`python -m harness.cli.main`: the kitl command."""

import sys

from harness.cli.main import main

sys.exit(main())
