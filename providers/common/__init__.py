"""Helpers every provider shares: the qemu-img wrapper, the two digests, the disk pipeline.

- ``qemu_img``: the only module that runs qemu-img (argument lists, JSON parsed into
  dataclasses, progress parsed from ``-p``, errors translated into ``virtrigaud.errors``).
- ``digest``: the transport digest (SHA256 of the object bytes) and the content digest
  (a chunked SHA256 tree over the guest-visible disk bytes, equal across formats).
- ``pipeline``: export an image into a storage writer and import a byte stream into an
  image, converting, hashing and verifying on the way.
- ``scratch`` and ``sparsefile``: the bounded scratch directory and sparse file I/O
  those pieces use.
"""
