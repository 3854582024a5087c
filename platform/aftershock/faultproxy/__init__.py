"""A TCP fault proxy that serves Toxiproxy's HTTP API with Toxiproxy's semantics.

The real Toxiproxy runs in staging; this one runs locally and in CI, so one chaos drill drives
either through the toxiproxy-python client (see client.py) or plain HTTP. Entry points:
`server.serve(settings)`, `server.main(argv)` (the `aftershock faultproxy` command) and
`server.FaultProxyServer` for embedding.
"""
