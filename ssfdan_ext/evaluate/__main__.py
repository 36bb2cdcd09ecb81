"""``python -m ssfdan_ext.evaluate`` runs ``ssfdan-eval``."""
import sys

from .cli import main

sys.exit(main())
