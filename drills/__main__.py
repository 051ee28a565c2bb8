"""``python -m drills``: see drills/run.py."""

from drills.run import main

raise SystemExit(main())
