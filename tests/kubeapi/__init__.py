"""A stateful Kubernetes API emulator for the Kubernetes adapter's tests (see server.py)."""
