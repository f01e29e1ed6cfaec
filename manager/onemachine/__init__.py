"""One-machine mode: ``virtrigaud run`` over the embedded store, with the providers
started as local processes, and the ``get`` / ``describe`` / ``inventory`` commands."""
