"""The libvirt/KVM provider (qemu:///system, qemu+ssh://, qemu+tls://).

Modules: ``client`` (the only code importing libvirt), ``domxml`` / ``volxml`` /
``snapxml`` (XML parsing and generation), ``names`` (checks on user-chosen names),
``inventory``, ``placement``, ``lifecycle``, ``snapshots``, ``checks`` (the
operations, on plain values) and ``driver`` (contract messages <-> those).
"""
