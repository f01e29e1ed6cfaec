"""Where the controllers read and write objects: one small interface, two homes.

``base.ObjectStore`` is the adapter every controller talks to. The embedded SQLite
store (one-machine mode, ``virtrigaud run``) and the Kubernetes adapter (issue #9)
implement it with the same semantics as the Kubernetes API.
"""
