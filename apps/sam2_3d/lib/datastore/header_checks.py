"""Image and label files are judged by their header bytes before any reader (ITK, nibabel) opens them.

Every place the app reads a volume (uploaded images and labels, labels used as mask prompts, session
uploads, studies-folder images; ``geometry.read_image`` and ``label_checks``) calls
:func:`check_volume_file` first and then reads with the ITK ImageIO it names, so ITK cannot pick a
different reader than the one whose header was checked. Two holes this closes:

* **a header naming another file**: NRRD ``data file:`` / ``datafile:``, MetaImage ``ElementDataFile``
  other than ``LOCAL``, NIfTI ``ni1``/``ni2`` and Analyze ``.hdr``/``.img`` pairs. ITK follows such a name
  anywhere on the server's disk (``/etc/passwd``, ``/dev/zero``), so a label could read a server file
  into a mask and send it back. These are refused with 400, and with the same words whatever the named
  file is (no answer tells whether a server file exists). The NRRD header is read here, line by line,
  never by ITK (whose ``ReadImageInformation`` already opens the detached file).
* **a tiny header declaring a huge volume**: the declared voxels x bytes per voxel must fit
  ``max_volume_gb`` (``--conf``, default 2) else 413, and an uncompressed file must hold the bytes its
  header declares (a gzip stream's length is taken from its trailer, else counted), else 422: nothing is
  allocated for a volume that is not there.

Accepted formats are the ones the datastore and the clients use: single-file NIfTI-1/2 (``.nii``,
``.nii.gz``), attached NRRD (``.nrrd``, ``.seg.nrrd``), MetaImage with ``ElementDataFile = LOCAL``
(``.mha``, ``.mhd``), DICOM (files or a series folder). Anything else is 415.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib

import numpy as np

from ..engine.errors import EngineInputError, InvalidLabel, UnreadableImage
from ..engine.options import option

DEFAULT_MAX_VOLUME_GB = 2.0
MAX_VOLUME_BYTES = int(DEFAULT_MAX_VOLUME_GB * 2**30)
HEAD_BYTES = 1 << 16  # a text header (NRRD, MetaImage) longer than this is not one a client sends

NIFTI_IO, NRRD_IO, META_IO, DICOM_IO = "NiftiImageIO", "NrrdImageIO", "MetaImageIO", "GDCMImageIO"
PAIR_EXTENSIONS = (".hdr", ".img", ".hdr.gz", ".img.gz", ".nhdr")


class DetachedData(EngineInputError):
    """A header that names another file for its voxels (HTTP 400)."""


class VolumeTooLarge(EngineInputError):
    """A volume whose declared size exceeds ``max_volume_gb`` (HTTP 413)."""

    status_code = 413


def configure(conf: dict) -> None:
    """``--conf max_volume_gb`` (default 2): the most bytes one volume's voxels may declare."""
    global MAX_VOLUME_BYTES
    MAX_VOLUME_BYTES = int(option(conf, "max_volume_gb", DEFAULT_MAX_VOLUME_GB) * 2**30)


def _detached(what: str, fmt: str) -> DetachedData:
    # the same words whatever the named file is: an answer must not tell whether a server file exists
    return DetachedData(
        f"the {what}'s {fmt} header names a separate data file; only single-file volumes are accepted "
        f"(.nii, .nii.gz, .nrrd with attached data, .mha/.mhd with ElementDataFile = LOCAL)"
    )


def _check_bytes(what: str, shape, itemsize: int, available: int | None) -> None:
    dims = [int(d) for d in shape]
    if not dims or min(dims) < 1:
        raise InvalidLabel(f"the {what}'s header declares the size {dims}; every dimension must be >= 1")
    declared = int(np.prod(np.array(dims, dtype=object))) * int(itemsize)
    if declared > MAX_VOLUME_BYTES:
        raise VolumeTooLarge(
            f"the {what}'s header declares {dims} voxels of {itemsize} byte(s) = {declared / 2**30:.2f} GiB; "
            f"this server takes volumes up to {MAX_VOLUME_BYTES / 2**30:.2f} GiB (--conf max_volume_gb)"
        )
    if available is not None and available < declared:
        raise InvalidLabel(
            f"the {what} file is truncated: its header declares {declared} bytes of voxels, the file holds {available}"
        )


def _gzip_length(path: str, limit: int) -> int:
    """Uncompressed length of a gzip file: its trailer (mod 2**32) when that suffices, else counted up to
    ``limit`` (a multi-member stream's trailer gives only its last member)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        trailer = struct.unpack("<I", f.read(4))[0]
    if trailer >= limit:
        return trailer
    n = 0
    try:
        with gzip.open(path, "rb") as f:
            while n < limit:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                n += len(chunk)
    except (EOFError, OSError, zlib.error) as e:
        raise InvalidLabel(f"the file is truncated or corrupt: {e}") from e
    return n


def _head(path: str) -> tuple[bytes, bool]:
    with open(path, "rb") as f:
        raw = f.read(HEAD_BYTES)
    if raw[:2] != b"\x1f\x8b":
        return raw, False
    # the start of the stream only: a cut-off file still shows its header (its length is checked later)
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, HEAD_BYTES), True
    except zlib.error as e:
        raise UnreadableImage(f"cannot read the file: it is not a readable gzip stream ({e})") from e


def _nifti(path: str, head: bytes, gz: bool, what: str) -> str:
    import nibabel as nib

    little = struct.unpack("<i", head[:4])[0]
    big = struct.unpack(">i", head[:4])[0]
    size = little if little in (348, 540) else big
    if size == 348:
        magic, header_class = head[344:348], nib.Nifti1Header
    else:
        magic, header_class = head[4:8], nib.Nifti2Header
    if magic in (b"ni1\x00", b"ni2\x00") or magic not in (b"n+1\x00", b"n+2\x00"):
        raise _detached(what, "NIfTI pair / Analyze (.hdr/.img)")
    if path.lower().endswith(PAIR_EXTENSIONS):
        raise _detached(what, "NIfTI pair / Analyze (.hdr/.img)")
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:size]))
        shape, dtype, offset = header.get_data_shape(), header.get_data_dtype(), int(header["vox_offset"])
    except Exception as e:  # nibabel: HeaderDataError, ValueError... for a damaged header
        raise UnreadableImage(f"the {what}'s NIfTI header is not readable: {e}") from e
    declared = int(np.prod(np.array([max(int(d), 0) for d in shape] or [0], dtype=object))) * dtype.itemsize
    if declared > MAX_VOLUME_BYTES or not gz:
        total = os.path.getsize(path)
    else:
        total = _gzip_length(path, offset + declared)
    offset = max(offset, size + 4)  # a single file's voxels start after the header and its extension flag
    _check_bytes(what, shape, dtype.itemsize, max(0, total - offset))
    return NIFTI_IO


def _nrrd_header_lines(head: bytes, what: str) -> tuple[list[str], int]:
    """The header's lines and its length in bytes (to the blank line that ends it)."""
    end, gap = head.find(b"\n\n"), 2
    if end < 0:
        end, gap = head.find(b"\r\n\r\n"), 4
    text = head[: end if end >= 0 else len(head)].decode("latin-1")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    for line in lines[1:]:
        key = " ".join(line.split(":", 1)[0].split()).lower()
        if not line.startswith("#") and ":=" not in line and key in ("data file", "datafile"):
            raise _detached(what, "NRRD")
    if end < 0:  # no blank line: a detached header (.nhdr) or one longer than any real one
        raise _detached(what, "NRRD")
    return lines, end + gap


def _nrrd(path: str, head: bytes, gz: bool, what: str) -> str:
    import nrrd

    lines, header_len = _nrrd_header_lines(head, what)
    try:
        header = nrrd.read_header(lines)
        dtype = nrrd.reader._determine_datatype(header)
        shape = [int(s) for s in header["sizes"]]
    except Exception as e:  # pynrrd: NRRDError, KeyError, ValueError for a malformed header
        raise UnreadableImage(f"the {what}'s NRRD header is not readable: {e}") from e
    raw = str(header.get("encoding", "raw")).lower() == "raw" and not gz
    _check_bytes(what, shape, dtype.itemsize, os.path.getsize(path) - header_len if raw else None)
    return NRRD_IO


META_TYPES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def _metaimage(path: str, head: bytes, what: str) -> str:
    fields, offset = {}, 0
    for raw_line in head.split(b"\n"):
        offset += len(raw_line) + 1
        key, _, value = raw_line.decode("latin-1").partition("=")
        key = key.strip().lower()
        fields[key] = value.strip()
        if key == "elementdatafile":
            break
    else:
        raise _detached(what, "MetaImage")  # no ElementDataFile line within the header bytes
    if fields["elementdatafile"].upper() != "LOCAL":
        raise _detached(what, "MetaImage")
    try:
        shape = [int(v) for v in fields["dimsize"].split()]
        itemsize = META_TYPES[fields["elementtype"].upper()] * int(fields.get("elementnumberofchannels", "1") or 1)
    except (KeyError, ValueError) as e:
        raise UnreadableImage(f"the {what}'s MetaImage header lacks a valid DimSize or ElementType ({e})") from e
    compressed = fields.get("compresseddata", "false").lower() == "true"
    _check_bytes(what, shape, itemsize, None if compressed else os.path.getsize(path) - offset)
    return META_IO


def _dicom(path: str, what: str) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        shape = [int(ds.Rows), int(ds.Columns), int(getattr(ds, "NumberOfFrames", 1) or 1)]
        itemsize = max(1, int(ds.BitsAllocated) // 8) * int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except Exception as e:  # pydicom: InvalidDicomError, AttributeError for a file without an image
        raise UnreadableImage(f"the {what} is not a readable DICOM image: {e}") from e
    _check_bytes(what, shape, itemsize, None)
    return DICOM_IO


def check_volume_file(path: str, what: str = "image") -> str:
    """Check one volume file's header (see the module doc); return the ITK ImageIO to read it with."""
    if os.path.islink(path) or not os.path.isfile(path):
        raise UnreadableImage(f"the {what} is not a regular file")
    head, gz = _head(path)
    if len(head) >= 348 and (struct.unpack("<i", head[:4])[0] in (348, 540)
                             or struct.unpack(">i", head[:4])[0] in (348, 540)):
        return _nifti(path, head, gz, what)
    if head.startswith(b"NRRD000"):
        return _nrrd(path, head, gz, what)
    if len(head) >= 132 and head[128:132] == b"DICM" and not gz:
        return _dicom(path, what)
    first = head[:64].lstrip().lower()
    if not gz and first.startswith((b"objecttype", b"ndims", b"comment", b"objectsubtype", b"transformtype")):
        return _metaimage(path, head, what)
    raise UnreadableImage(
        f"cannot read the {what}: it is not a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) or DICOM file"
    )


def check_series_folder(folder: str, what: str = "image") -> None:
    """A DICOM series folder (session upload, DICOMweb cache): regular files only, no links out of it,
    their bytes together within the volume bound."""
    total = 0
    for entry in os.scandir(folder):
        if entry.is_symlink():
            raise UnreadableImage(f"the {what} folder holds a link ({entry.name!r}); only regular files are read")
        if entry.is_file(follow_symlinks=False):
            total += entry.stat(follow_symlinks=False).st_size
    if total > MAX_VOLUME_BYTES:
        raise VolumeTooLarge(
            f"the {what} series holds {total / 2**30:.2f} GiB; this server takes volumes up to "
            f"{MAX_VOLUME_BYTES / 2**30:.2f} GiB (--conf max_volume_gb)"
        )
