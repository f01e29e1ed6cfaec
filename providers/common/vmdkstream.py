"""monolithicSparse VMDK as a byte stream: written metadata-first, parsed as it arrives.

**Written** (``SparseVmdkLayout`` + ``stream_sparse_vmdk``): the layout ``qemu-img create
-f vmdk`` uses, so every vmdk reader accepts it. In 512-byte sectors:

- 0: sparse extent header: magic ``KDMV``, version 1, flags valid-newline-detect |
  redundant-GD (no compression, no markers, no zeroed grains), capacity, grainSize 128
  (64 KiB grains), descriptorOffset 1, descriptorSize 20, numGTEsPerGT 512, rgdOffset,
  gdOffset, overHead, the ``"\\n \\r\\n"`` check bytes, compressAlgorithm 0;
- 1-20: the embedded descriptor (createType ``monolithicSparse``, one ``RW <sectors>
  SPARSE "<name>"`` extent, ``parentCID=ffffffff``, qemu's ``ddb.*`` lines);
- 21: redundant grain directory, then its grain tables (4 sectors each), then the grain
  directory and its grain tables (identical contents), zero padding up to overHead
  (a multiple of 128 sectors);
- from overHead: the allocated grains, 64 KiB each, in ascending guest order.

The capacity is the source size rounded up to a whole sector (qemu does the same for a
raw file of such a size); the guest sees zeros past the source's end.

**Parsed** (``SparseVmdkStreamReader``): any KDMV sparse extent of version 1-3 whose
header, embedded descriptor, grain directory (the primary one, as qemu reads) and the
grain tables it references all lie before overHead, and whose grains all lie at or after
it, in any host order. Grains are 128 sectors. Everything before the last grain table is
kept (to hand it back on refusal; overHead may be at most ``max_metadata`` bytes); data
is never buffered: pieces of the fed chunks are handed out as they pass. Zeroed-grain
entries (flag bit 2, entry 1) and unallocated grains are never handed out: they read as 0.

Refusals: ``NotStreamable`` (with every byte fed so far, for a fallback that stores the
object and runs qemu-img) for no KDMV magic (descriptor files, COWD, garbage), version
above 3, compression or markers (streamOptimized), grains other than 128 sectors,
metadata past overHead (or overHead above ``max_metadata``), grains inside the metadata,
two grains sharing or overlapping bytes. ``InvalidArgument`` for a delta disk (parentCID
or parentFileNameHint), no embedded descriptor, createType other than monolithicSparse,
not exactly one SPARSE extent or one disagreeing with the header, capacity 0 or above
64 TiB, 0 or more than 512 entries per grain table. ``ChecksumMismatch`` for damaged
newline check bytes and, in ``finish``, a truncated object.
"""

from __future__ import annotations

import hashlib
import re
import struct
import sys
from array import array
from collections.abc import Callable, Iterable, Iterator
from functools import cached_property

from virtrigaud.errors import ChecksumMismatch, InternalError, InvalidArgument, VirtrigaudError

from .sparsefile import unit_runs

SECTOR = 512
GRAIN_SECTORS = 128
GRAIN_SIZE = GRAIN_SECTORS * SECTOR  # 65536
GTES_PER_GT = 512
MAX_VIRTUAL_SIZE = 64 << 40  # larger capacities are refused as malformed
MAX_METADATA_BYTES = 1 << 30  # the parser refuses (NotStreamable) a larger metadata region
MAX_OBJECT_SECTORS = 1 << 32  # grain table entries are 32-bit sector numbers
STREAM_PIECE = 4 << 20

MAGIC = b"KDMV"
CHECK_BYTES = b"\n \r\n"
FLAG_NL_DETECT = 1 << 0
FLAG_RGD = 1 << 1
FLAG_ZERO_GRAIN = 1 << 2
FLAG_COMPRESS = 1 << 16
FLAG_MARKER = 1 << 17
GD_AT_END = 0xFFFFFFFFFFFFFFFF
NO_PARENT_CID = 0xFFFFFFFF
_HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")  # magic + qemu's VMDK4Header, 79 bytes
_DESC_SECTORS = 20
_EXTENT_LINE = re.compile(r'^(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?(?:\s+\d+)?$')
_ZERO_GT = bytes(GTES_PER_GT * 4)


class NotStreamable(InvalidArgument):
    """A vmdk this module does not stream; it may still be a valid image for qemu-img.

    ``consumed`` holds every byte fed so far, so the caller can store the object whole.
    """

    def __init__(self, message: str, consumed: bytes) -> None:
        super().__init__(message)
        self.consumed = consumed


def _le32(data: bytes | bytearray | memoryview) -> array[int]:
    table = array("I")
    table.frombytes(data)
    if sys.byteorder == "big":
        table.byteswap()
    return table


def _sectors(n: int) -> int:
    return -(-n // SECTOR)


# ---------------------------------------------------------------- writer


class SparseVmdkLayout:
    """Where everything goes in a monolithicSparse vmdk of known allocation.

    ``data_ranges``: guest byte ranges ``(start, end)`` that may hold data (e.g. from
    ``qemu-img map``), in any order, unaligned and overlapping allowed; every grain
    touching one is allocated. ``virtual_size`` is rounded up to a sector (the vmdk's
    capacity); reads never go past ``virtual_size`` itself. ``cid``: the descriptor's
    content id; by default derived from the layout, so the same disk gives the same bytes
    (a retried upload is identical).
    """

    def __init__(
        self,
        virtual_size: int,
        data_ranges: Iterable[tuple[int, int]],
        *,
        name: str = "disk.vmdk",
        cid: int | None = None,
    ) -> None:
        if not 0 < virtual_size <= MAX_VIRTUAL_SIZE:
            raise InvalidArgument(
                f"virtual size {virtual_size} is out of range for a vmdk (1 byte to 64 TiB)"
            )
        if not name or len(name) > 255 or any(c in name for c in '"/\\\0\r\n'):
            raise InvalidArgument(f"invalid vmdk extent file name {name!r}")
        if cid is not None and not 0 <= cid < NO_PARENT_CID:
            raise InvalidArgument(f"vmdk CID must be a 32-bit value below ffffffff, got {cid}")
        self.virtual_size = virtual_size
        self.capacity_sectors = _sectors(virtual_size)
        self.name = name
        runs = unit_runs(data_ranges, virtual_size, GRAIN_SIZE)
        grains_total = -(-self.capacity_sectors // GRAIN_SECTORS)
        self._gt_count = -(-grains_total // GTES_PER_GT)
        self._gd_sectors = _sectors(self._gt_count * 4)
        tables = self._gd_sectors + self._gt_count * (GTES_PER_GT * 4 // SECTOR)
        self._rgd = 1 + _DESC_SECTORS
        self._gd = self._rgd + tables
        self.grain_offset = -(-(self._gd + tables) // GRAIN_SECTORS) * GRAIN_SECTORS
        count = sum(stop - first for first, stop in runs)
        if self.grain_offset + count * GRAIN_SECTORS > MAX_OBJECT_SECTORS:
            raise InvalidArgument(
                f"{count * GRAIN_SIZE} bytes of allocated data do not fit a monolithicSparse "
                "vmdk (grain offsets are 32-bit sector numbers: 2 TiB at most)"
            )
        # 4 bytes per allocated grain (a guest grain index is below 2**30 for 64 TiB).
        self.grains = array("I", (g for first, stop in runs for g in range(first, stop)))
        self.object_size = self.grain_offset * SECTOR + count * GRAIN_SIZE
        if cid is None:
            seed = f"{self.capacity_sectors}:{name}:{runs}".encode()
            cid = int.from_bytes(hashlib.sha256(seed).digest()[:4], "big")
            cid = min(cid, NO_PARENT_CID - 1)
        self.cid = cid

    def grain_host_offset(self, index_in_grains: int) -> int:
        """Object byte offset of the ``index_in_grains``-th allocated grain."""
        if not 0 <= index_in_grains < len(self.grains):
            raise InternalError(f"grain index {index_in_grains} out of range")
        return self.grain_offset * SECTOR + index_in_grains * GRAIN_SIZE

    @cached_property
    def header(self) -> bytes:
        """Everything before the first grain (``grain_offset`` sectors)."""
        return b"".join(self.iter_header())

    def descriptor(self) -> str:
        cylinders = self.capacity_sectors * SECTOR // (63 * 16 * SECTOR)
        return (
            "# Disk DescriptorFile\nversion=1\n"
            f"CID={self.cid:08x}\nparentCID={NO_PARENT_CID:08x}\n"
            'createType="monolithicSparse"\n\n# Extent description\n'
            f'RW {self.capacity_sectors} SPARSE "{self.name}"\n\n'
            '# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = "4"\n'
            f'ddb.geometry.cylinders = "{cylinders}"\nddb.geometry.heads = "16"\n'
            'ddb.geometry.sectors = "63"\nddb.adapterType = "ide"\n'
            'ddb.toolsVersion = "2147483647"\n'
        )

    def iter_header(self) -> Iterator[bytes]:
        """The metadata in pieces of at most about 1 MiB (``header`` without holding it)."""
        fields: tuple[int, ...] = (1, FLAG_NL_DETECT | FLAG_RGD, self.capacity_sectors)
        fields += (GRAIN_SECTORS, 1)
        fields += (_DESC_SECTORS, GTES_PER_GT, self._rgd, self._gd, self.grain_offset)
        head = _HEADER.pack(MAGIC, *fields, 0, CHECK_BYTES, 0).ljust(SECTOR, b"\0")
        desc = self.descriptor().encode()
        yield head + desc.ljust(_DESC_SECTORS * SECTOR, b"\0")
        for gd in (self._rgd, self._gd):
            first_gt = gd + self._gd_sectors
            entries = [first_gt + i * (GTES_PER_GT * 4 // SECTOR) for i in range(self._gt_count)]
            yield struct.pack(f"<{self._gt_count}I", *entries).ljust(
                self._gd_sectors * SECTOR, b"\0"
            )
            yield from self._tables()
        written = self._gd + self._gd_sectors + self._gt_count * (GTES_PER_GT * 4 // SECTOR)
        yield bytes((self.grain_offset - written) * SECTOR)

    def _tables(self) -> Iterator[bytes]:
        grains, k, piece = self.grains, 0, bytearray()
        for t in range(self._gt_count):
            end = (t + 1) * GTES_PER_GT
            if k < len(grains) and grains[k] < end:
                table = array("I", _ZERO_GT)
                while k < len(grains) and grains[k] < end:
                    table[grains[k] - t * GTES_PER_GT] = self.grain_offset + k * GRAIN_SECTORS
                    k += 1
                if sys.byteorder == "big":
                    table.byteswap()
                piece += table.tobytes()
            else:
                piece += _ZERO_GT
            if len(piece) >= 1 << 20:
                yield bytes(piece)
                piece.clear()
        if piece:
            yield bytes(piece)


def stream_sparse_vmdk(
    layout: SparseVmdkLayout, read: Callable[[int, int], bytes]
) -> Iterator[bytes]:
    """The whole object: the metadata, then the grains (runs of guest-consecutive grains
    read with one ``read(guest_offset, length)`` each, at most 4 MiB)."""
    yield from layout.iter_header()
    grains, i, per_piece = layout.grains, 0, STREAM_PIECE // GRAIN_SIZE
    while i < len(grains):
        j = i + 1
        while j < len(grains) and j - i < per_piece and grains[j] == grains[j - 1] + 1:
            j += 1
        start, length = grains[i] * GRAIN_SIZE, (j - i) * GRAIN_SIZE
        wanted = max(0, min(length, layout.virtual_size - start))
        data = read(start, wanted) if wanted else b""
        if len(data) != wanted:
            raise ChecksumMismatch(
                f"source disk returned {len(data)} bytes at offset {start}, expected {wanted} "
                "(did it shrink while being exported?)"
            )
        yield data if wanted == length else bytes(data) + bytes(length - wanted)
        i = j


# ---------------------------------------------------------------- parser


class SparseVmdkStreamReader:
    """Parse a monolithicSparse vmdk as it arrives; hand out the guest data.

    Guest ranges never handed out read as zeros (unallocated or zeroed grains). Pieces
    are memoryviews of the fed chunks (no copy): consume them before reusing a buffer.
    """

    def __init__(self, *, max_metadata: int = MAX_METADATA_BYTES) -> None:
        self.virtual_size: int | None = None
        self.grains_ascending: bool | None = None
        self.data_bytes: int | None = None
        self.zeroed_grains: int | None = None  # grains marked "reads as zeros"
        self.position = 0  # bytes fed so far
        self._max_metadata = max_metadata
        self._meta: bytearray | None = bytearray()  # every byte until the metadata is known
        self._needed = SECTOR  # metadata bytes needed for the next parsing step
        self._fields: tuple[int, ...] | None = None
        self._gts: list[tuple[int, int]] | None = None  # (GD index, GT byte offset)
        # 8 bytes per allocated grain: its sector in the object (ascending), its guest index.
        self._hosts: array[int] = array("I")
        self._guests: array[int] = array("I")
        self._next = 0
        self._done = False

    def feed(self, data: bytes | bytearray | memoryview) -> Iterator[tuple[int, memoryview]]:
        """Consume the next bytes; return the ``(guest_offset, data)`` pieces they complete."""
        if self._done:
            raise InternalError("vmdk stream reader used after finish() or a refusal")
        view = memoryview(data).cast("B")
        base = self.position
        self.position += len(view)
        if self._meta is not None:
            self._meta += view
            try:
                if not self._parse_metadata():
                    return iter(())
            except VirtrigaudError:
                self._done = True
                raise
            view, base, self._meta = memoryview(self._meta), 0, None
        return iter(self._pieces(view, base))

    def finish(self) -> None:
        """End of the object: everything the metadata references must have arrived."""
        if self._done:
            raise InternalError("vmdk stream reader used after finish() or a refusal")
        self._done = True
        if self._meta is not None:
            raise ChecksumMismatch(
                f"truncated vmdk: the object ends after {self.position} bytes, inside its "
                f"metadata (at least {self._needed} bytes expected)"
            )
        if self._next < len(self._hosts):
            end = self._hosts[-1] * SECTOR + GRAIN_SIZE
            raise ChecksumMismatch(
                f"truncated vmdk: the object ends after {self.position} bytes but its "
                f"grains extend to {end}"
            )

    # -- metadata

    def _refuse(self, message: str) -> NotStreamable:
        assert self._meta is not None
        return NotStreamable(message, bytes(self._meta))

    def _parse_metadata(self) -> bool:
        meta = self._meta
        assert meta is not None
        if self._fields is None:
            if len(meta) >= 4 and meta[:4] != MAGIC:
                raise self._refuse(self._not_kdmv(bytes(meta[:64])))
            if len(meta) < SECTOR:
                return False
            self._parse_header()
        if len(meta) < self._needed:
            return False
        if self._gts is None:
            self._parse_descriptor()
            self._parse_directory()
            if len(meta) < self._needed:
                return False
        self._parse_tables()
        return True

    @staticmethod
    def _not_kdmv(head: bytes) -> str:
        if head.startswith(b"COWD"):
            return "a VMDK3 (COWD) sparse extent is not streamed"
        text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
        if text.startswith((b"#", b"version=")):
            return "a vmdk descriptor file (its data lives in other files) is not streamed"
        return f"not a sparse vmdk extent (starts with {head[:8].hex()}, expected KDMV)"

    def _parse_header(self) -> None:
        assert self._meta is not None
        fields = _HEADER.unpack_from(self._meta)
        _, version, flags, capacity, grain, desc, desc_size, gtes, _, gd, overhead, _ = fields[:12]
        check, compress = fields[12:]
        if version not in (1, 2, 3):
            raise self._refuse(f"sparse vmdk version {version} is not streamed (1-3 are)")
        if flags & (FLAG_COMPRESS | FLAG_MARKER) or compress or gd == GD_AT_END:
            raise self._refuse("a compressed (streamOptimized) vmdk is not streamed")
        if grain != GRAIN_SECTORS:
            raise self._refuse(f"vmdk grain size {grain} sectors is not streamed (only 128)")
        if flags & FLAG_NL_DETECT and check != CHECK_BYTES:
            raise ChecksumMismatch(
                "vmdk header check bytes are damaged: the file went through a transfer "
                "that rewrote line endings (text mode)"
            )
        if not 0 < gtes <= GTES_PER_GT:
            raise InvalidArgument(f"malformed vmdk: {gtes} entries per grain table (1-512)")
        if not 0 < capacity * SECTOR <= MAX_VIRTUAL_SIZE:
            raise InvalidArgument(
                f"vmdk capacity {capacity} sectors is out of range (1 sector to 64 TiB)"
            )
        if desc == 0 or desc_size == 0:
            raise InvalidArgument("vmdk has no embedded descriptor: not a monolithicSparse disk")
        end = overhead * SECTOR
        if end > self._max_metadata:
            raise self._refuse(f"vmdk metadata of {end} bytes is too large to stream")
        gd_entries = -(-capacity // (gtes * GRAIN_SECTORS))
        desc_end = (desc + desc_size) * SECTOR
        gd_end = gd * SECTOR + gd_entries * 4
        if desc < 1 or gd < 1 or max(desc_end, gd_end) > end:
            raise self._refuse("vmdk descriptor or grain directory lies past overHead")
        self.virtual_size = capacity * SECTOR
        self._fields = (flags, capacity, desc, desc_size, gtes, gd, gd_entries, end)
        self._needed = max(desc_end, gd_end)

    def _parse_descriptor(self) -> None:
        assert self._meta is not None and self._fields is not None
        _, capacity, desc, desc_size = self._fields[:4]
        raw = bytes(self._meta[desc * SECTOR : (desc + desc_size) * SECTOR])
        text = raw.split(b"\0", 1)[0].decode("latin-1")
        values: dict[str, str] = {}
        extents: list[tuple[int, str]] = []
        for line in (part.strip() for part in text.splitlines()):
            match = _EXTENT_LINE.match(line)
            if match:
                extents.append((int(match[2]), match[3]))
            elif line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip('"')
        if not text.strip():
            raise InvalidArgument("vmdk has an empty descriptor: not a monolithicSparse disk")
        create_type = values.get("createType", "monolithicSparse")
        if create_type != "monolithicSparse":
            raise InvalidArgument(f"vmdk createType {create_type!r} is not monolithicSparse")
        if values.get("parentCID", "ffffffff").lower() != "ffffffff" or values.get(
            "parentFileNameHint"
        ):
            hint = values.get("parentFileNameHint", "?")
            raise InvalidArgument(
                f"vmdk is a delta disk that depends on a parent ({hint!r}); upload a "
                "consolidated disk instead"
            )
        if len(extents) != 1 or extents[0][1] != "SPARSE":
            raise InvalidArgument(
                f"vmdk descriptor must name exactly one SPARSE extent, found {extents}"
            )
        if extents[0][0] != capacity:
            raise InvalidArgument(
                f"malformed vmdk: the descriptor says {extents[0][0]} sectors, "
                f"the header {capacity}"
            )

    def _parse_directory(self) -> None:
        assert self._meta is not None and self._fields is not None
        _, _, _, _, gtes, gd, gd_entries, end = self._fields
        directory = _le32(self._meta[gd * SECTOR : gd * SECTOR + gd_entries * 4])
        self._gts = []
        for index, sector in enumerate(directory):
            if not sector:
                continue
            if sector * SECTOR + gtes * 4 > end:
                raise self._refuse(f"vmdk grain table {index} lies past overHead")
            self._gts.append((index, sector * SECTOR))
            self._needed = max(self._needed, sector * SECTOR + gtes * 4)

    def _parse_tables(self) -> None:
        assert self._meta is not None and self._fields is not None and self._gts is not None
        flags, _, _, _, gtes, _, _, end = self._fields
        assert self.virtual_size is not None
        last_grain = -(-self.virtual_size // GRAIN_SIZE)
        zero_flag = bool(flags & FLAG_ZERO_GRAIN)
        hosts, guests = array("I"), array("I")  # in guest order first
        zeroed = 0
        for index, offset in self._gts:
            table = _le32(self._meta[offset : offset + gtes * 4])
            for slot, sector in ((j, s) for j, s in enumerate(table) if s):
                guest = index * gtes + slot
                if guest >= last_grain:
                    continue  # past the disk's end: never read
                if zero_flag and sector == 1:
                    zeroed += 1
                elif sector * SECTOR < end:
                    raise self._refuse(
                        f"vmdk grain for guest offset {guest * GRAIN_SIZE} points into the "
                        f"metadata (sector {sector})"
                    )
                else:
                    hosts.append(sector)
                    guests.append(guest)
        # Usually the grains are stored in guest order; otherwise sort them by host offset.
        ascending = all(hosts[i - 1] < hosts[i] for i in range(1, len(hosts)))
        if not ascending:
            order = sorted(range(len(hosts)), key=hosts.__getitem__)
            hosts = array("I", (hosts[i] for i in order))
            guests = array("I", (guests[i] for i in order))
        for i in range(1, len(hosts)):
            if (hosts[i] - hosts[i - 1]) * SECTOR < GRAIN_SIZE:
                what = "the same grain" if hosts[i] == hosts[i - 1] else "overlapping grains"
                raise self._refuse(f"two vmdk grain table entries point at {what}")
        self._hosts, self._guests = hosts, guests
        self.grains_ascending = ascending
        self.data_bytes = len(hosts) * GRAIN_SIZE
        self.zeroed_grains = zeroed

    # -- data

    def _pieces(self, view: memoryview, base: int) -> list[tuple[int, memoryview]]:
        sectors, guests, n = self._hosts, self._guests, len(self._hosts)
        assert self.virtual_size is not None
        end, i, pieces = base + len(view), self._next, []
        while i < n and sectors[i] * SECTOR < end:
            j = i
            while (
                j + 1 < n
                and sectors[j + 1] == sectors[j] + GRAIN_SECTORS
                and guests[j + 1] == guests[j] + 1
                and sectors[j + 1] * SECTOR < end
            ):
                j += 1
            run_end = sectors[j] * SECTOR + GRAIN_SIZE
            lo = max(sectors[i] * SECTOR, base)
            guest = guests[i] * GRAIN_SIZE + lo - sectors[i] * SECTOR
            length = min(min(run_end, end) - lo, self.virtual_size - guest)
            if length > 0:
                pieces.append((guest, view[lo - base : lo - base + length]))
            if run_end > end:
                i = j  # this grain continues in the next chunk
                break
            i = j + 1
        self._next = i
        return pieces
