"""`python -m samkit.cli ...` (what `torchrun -m samkit.cli train ...` runs)."""

from samkit.cli import main

raise SystemExit(main())
