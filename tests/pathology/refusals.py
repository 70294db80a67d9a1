"""Build the files a slide upload must refuse, each the way a user might really send it."""

from __future__ import annotations

import io
import zipfile

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from tests.pathology.helpers import WSI


def ct_image() -> bytes:
    """Make a small but complete DICOM CT image."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = CTImageStorage
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "CT"
    dataset.PatientName = "Nguyen^Van^An"
    dataset.Rows = dataset.Columns = 32
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = np.arange(32 * 32, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _photo() -> Image.Image:
    pixels = (np.random.default_rng(7).random((300, 400, 3)) * 255).astype("uint8")
    return Image.fromarray(pixels)


def plain_jpeg() -> bytes:
    """Make a photograph as a phone would send it."""
    buffer = io.BytesIO()
    _photo().save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def striped_tiff() -> bytes:
    """Make a TIFF that stores its image in strips (no tiles, no pyramid)."""
    buffer = io.BytesIO()
    _photo().save(buffer, "TIFF", compression="tiff_lzw")
    return buffer.getvalue()


def truncated_svs() -> bytes:
    """Cut a real SVS short, as an interrupted copy would."""
    data = (WSI / "CMU-1-Small-Region.svs").read_bytes()
    return data[: len(data) * 9 // 10]


def zip_with(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, data in members.items():
            bundle.writestr(name, data)
    return buffer.getvalue()


def zip_escaping_the_folder() -> bytes:
    """Make a zip whose member tries to climb out of the folder it is unpacked into."""
    return zip_with({"../../outside.dcm": (WSI / "boxes_0.dcm").read_bytes()})


def zip_with_ct() -> bytes:
    """Make a 'series' whose second file is a CT image."""
    return zip_with({"a/1.dcm": (WSI / "boxes_0.dcm").read_bytes(), "a/2.dcm": ct_image()})


def damaged_zip() -> bytes:
    whole = zip_with(
        {"s/1.dcm": (WSI / "boxes_0.dcm").read_bytes(), "s/2.dcm": (WSI / "boxes_1.dcm").read_bytes()}
    )
    return whole[: len(whole) - 60]
