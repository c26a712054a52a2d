"""`python -m proxy.cli`: the same as the `payware` command."""

import sys

from proxy.cli.main import main

sys.exit(main())
