"""Image files to arrays: PNG (8/16-bit, with the significant bits it declares), TIFF, JPEG and
DICOM (rescale, windowing, MONOCHROME1), then to the model's tensor size.

Apart from the manifest so that a new format is one function here.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from mmaudit.engine.errors import DataError

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: Path) -> bool:
    """A DICOM file: a .dcm / .dicom suffix, or the 'DICM' marker after the 128-byte preamble
    (PACS exports often have no suffix at all)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def png_significant_bits(path: Path) -> int | None:
    """The first value of a PNG's sBIT chunk (significant bits, e.g. 12), None without one.

    Pillow reads the chunk but does not expose it, so the chunks before the image data are
    walked here: 8-byte signature, then (length, type, data, CRC) records.
    """
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return None
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            if kind == b"sBIT":
                data = f.read(length)
                return data[0] if data else None
            if kind in (b"IDAT", b"IEND"):
                return None
            f.seek(length + 4, 1)  # the chunk's data and CRC
    return None


def load_image_file(path: Path, max_value: float | None = None) -> np.ndarray:
    """Read a PNG / JPEG / TIFF / DICOM file into a float32 (H, W, C) array in [0, 1].

    The scale never depends on the pixels, so the same stored value always gives the
    same input. 8-bit images: value / 255. Greyscale images with more than 8 bits (16-bit
    PNG / TIFF): value / ``max_value`` when given (``data.image.max_value``), else by the
    file's bit depth: 2**sBIT - 1 when a PNG records its significant bits, else 65535.
    32-bit integer and float images have no bit depth to go by and need ``max_value``.
    Values above the white level are clipped to 1. DICOM: see ``dicom_to_unit``.
    """
    if is_dicom(path):
        return _channels_last(dicom_to_unit(path))
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        # older Pillow opens 16-bit greyscale PNG as "I"; PNG holds at most 16 bits
        if im.mode.startswith("I;16") or (im.mode == "I" and im.format == "PNG"):
            arr = np.asarray(im, dtype=np.float32)
            if max_value is None:
                bits = png_significant_bits(path) if im.format == "PNG" else None
                max_value = 2.0**bits - 1 if bits and bits < 16 else 65535.0
            arr = np.clip(arr / max_value, 0.0, 1.0)
        elif im.mode in ("I", "F"):
            if max_value is None:
                raise DataError(
                    f"{path}: a {'32-bit integer' if im.mode == 'I' else 'floating-point'}"
                    " image has no bit depth to scale it by",
                    hint="set data.image.max_value to the value that is white",
                )
            arr = np.clip(np.asarray(im, dtype=np.float32) / max_value, 0.0, 1.0)
        else:
            arr = np.asarray(im.convert("RGB" if im.mode in ("RGB", "RGBA", "P") else "L"))
            arr = arr.astype(np.float32) / 255.0
    return _channels_last(arr)


def _channels_last(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) -> (H, W, C) with at most 3 channels (alpha dropped)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr[:, :, :3]


def dicom_to_unit(path: Path) -> np.ndarray:
    """A DICOM image as float32 in [0, 1], (H, W) grey or (H, W, 3) colour; multi-frame:
    the middle frame.

    Grey images follow the DICOM display pipeline: the modality LUT (RescaleSlope /
    Intercept or a Modality LUT Sequence), then the first VOI LUT (a VOI LUT Sequence,
    else the first WindowCenter / WindowWidth). The result is mapped to [0, 1] over the
    range that step can produce: the window when there is one, else the BitsStored range
    passed through the modality LUT (CT: every Hounsfield value the file can hold). Never a
    per-image min-max, so the same tissue gives the same input in every file. MONOCHROME1
    (white = low) is inverted. Colour images: value / (2**BitsStored - 1).
    """
    try:
        import pydicom
    except ImportError as exc:
        raise DataError(
            f"{path}: DICOM needs the 'dicom' extra", hint="pip install 'mmaudit[dicom]'"
        ) from exc
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing
    except ImportError:  # pydicom 2
        from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
            apply_modality_lut,
            apply_voi,
            apply_windowing,
        )

    ds = pydicom.dcmread(str(path), force=True)
    arr = ds.pixel_array
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        arr = arr[arr.shape[0] // 2]
    bits = int(ds.get("BitsStored", 0) or 0)
    if bits <= 0:
        raise DataError(
            f"{path}: DICOM without BitsStored: its pixel range is unknown",
            hint="convert it to PNG or fix the DICOM header",
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        return np.clip(arr.astype(np.float32) / (2.0**bits - 1), 0.0, 1.0)
    # the range of stored values, then of the modality LUT's output (as pydicom's windowing)
    lo, hi = (
        (0.0, 2.0**bits - 1)
        if ds.get("PixelRepresentation", 0) == 0
        else (
            -(2.0 ** (bits - 1)),
            2.0 ** (bits - 1) - 1,
        )
    )
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, 2.0 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1
    elif "RescaleSlope" in ds and "RescaleIntercept" in ds:
        slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = sorted((lo * slope + intercept, hi * slope + intercept))
    values = apply_modality_lut(arr, ds)
    voi = ds.get("VOILUTSequence")
    if voi and voi[0].get("LUTDescriptor") is not None and voi[0].get("LUTData") is not None:
        values = apply_voi(np.rint(values).astype(np.int64), ds)
        lo, hi = 0.0, 2.0 ** int(voi[0].LUTDescriptor[2]) - 1
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        values = apply_windowing(values, ds)  # the window stretched over [lo, hi]
    unit = np.clip((np.asarray(values, dtype=np.float64) - lo) / (hi - lo), 0.0, 1.0)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        unit = 1.0 - unit
    return unit.astype(np.float32)


def image_to_tensor(arr: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """(H, W, C) in [0, 1] -> (channels, size, size), bilinear resize, gray <-> RGB as needed."""
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float()
    if t.shape[0] != channels:
        t = t.mean(0, keepdim=True) if channels == 1 else t[:1].expand(3, -1, -1)
    if t.shape[1:] != (size, size):
        t = torch.nn.functional.interpolate(
            t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return t.contiguous()
