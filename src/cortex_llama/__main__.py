"""``python -m cortex_llama`` runs the command line."""

from .cli import main

raise SystemExit(main())
