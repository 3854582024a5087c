# Conveniences; the scripts are the source of truth (a fresh Debian machine may lack make).
.PHONY: setup demo test bench protos
setup: ; bash scripts/setup.sh
demo: ; bash scripts/demo.sh
test: ; bash scripts/test.sh
bench: ; bash scripts/setup.sh && .venv/bin/python benchmarks/overhead.py
protos: ; .venv/bin/python tools/gen_protos.py
