"""Generated from protos/runstream/v1 by scripts/gen_protos.py; do not edit."""
