"""`python -m aftershock.faultproxy`: the same as `aftershock faultproxy`."""

from aftershock.faultproxy.server import main

raise SystemExit(main())
