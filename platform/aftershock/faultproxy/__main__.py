"""`python -m aftershock.faultproxy`: the same as `aftershock toxiproxy`."""

from aftershock.faultproxy.server import main

raise SystemExit(main())
