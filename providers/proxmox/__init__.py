"""The Proxmox VE provider: control through the PVE API (proxmoxer), disk data through
the node (SSH with paramiko, or local access) with qemu-img. See ``driver``."""
