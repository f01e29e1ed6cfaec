"""The VMware vSphere provider (vCenter or ESXi through pyvmomi).

Modules, from the bottom up: ``settings`` (endpoint, TLS and options from the
ProviderConfig), ``client`` (the session and every pyvmomi call, faults -> typed
errors), ``tasks`` (the one place vSphere tasks are waited for), ``dspath`` and
``vmdk`` (datastore paths, VMDK descriptors), ``inventory`` (one PropertyCollector
retrieval for all VMs), ``placement`` (datacenter, datastore, pool, folder, networks),
``specs`` (device specs for new VMs), ``lifecycle``, ``snapshots``, ``dshttp``
(datastore files over HTTPS), ``exports``, ``imports``, ``checks`` and ``driver``.
"""
