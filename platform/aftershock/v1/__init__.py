"""Generated from proto/aftershock/v1 by tools/gen_protos.py; do not edit."""
