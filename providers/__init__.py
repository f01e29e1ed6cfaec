"""Provider servers, one package per hypervisor, and the shared runtime."""
