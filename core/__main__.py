from scredge.cli import main

raise SystemExit(main())
