"""``python -m ssfdan_ext.train`` is ``ssfdan-train``."""
import sys

from .cli import main

sys.exit(main())
