"""Aftershock's Grafana dashboards as code (grafana-foundation-sdk), rendered to ../../json/."""
