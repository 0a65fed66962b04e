"""``python -m peftbench.cli``: the same commands as the ``peftbench`` script (study steps run this way)."""

import sys

from peftbench.cli.app import main

sys.exit(main())
