"""`python -m finetext ...` is the `finetext` command."""
from finetext.pipeline.cli import main

raise SystemExit(main())
