"""``python -m aligner``: the ``aligner`` command."""

import sys

from aligner.cli import main

sys.exit(main())
