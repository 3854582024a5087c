from aftershock.cli import main

raise SystemExit(main())
