"""``python -m kdlandmark`` (used by ``torchrun -m kdlandmark train ...``)."""

from kdlandmark.cli import main

raise SystemExit(main())
