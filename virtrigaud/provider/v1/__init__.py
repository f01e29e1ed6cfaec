"""Generated stubs of virtrigaud.provider.v1 (see scripts/gen-proto.sh; never edit)."""
