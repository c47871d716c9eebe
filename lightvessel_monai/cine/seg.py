"""A DICOM SEG of a cine run: one binary segment, "coronary artery", one segmentation frame per source frame.

Built with highdicom. highdicom 0.28.2 writes a SEG of a source without a Frame of Reference (an XA run has none:
projection images have no patient coordinates) only for a single source frame ("Only a single frame is supported
when the source image has no Frame of Reference UID", highdicom issue #200, open), and it reads the functional
groups of a legacy multi-frame XA as if it were an enhanced image. So highdicom builds the SEG of frame 1 of the run
(every module: patient and study copied from the source, general equipment, the segment with its SNOMED CT codes,
the algorithm, the Common Instance Reference to the source series and instance, the per-frame derivation
references), from a view of the source header that presents it as one frame. :func:`cine_segmentation` then
repeats frame 1's per-frame functional groups for every frame, each pointing at its own source frame
(``SourceImageSequence`` > ``ReferencedFrameNumber``): without a Frame of Reference those references are what maps a
SEG frame to a source frame, pixel for pixel (DICOM PS3.3 A.51.5.1). A second dimension, the Temporal Position Index
of the Frame Content, makes the frames' dimension indices distinct. highdicom reads the result back and maps it to
the source frames (``Segmentation.get_pixels_by_source_frame``; tested).

Codes: segmented property category SCT 91723000 "Anatomical Structure", type SCT 41801008 "Coronary artery"
(pydicom's ``codes.SCT``); algorithm family DCM 113037 "Artificial Intelligence" (CID 7162).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np

__all__ = ["SEGMENT_LABEL", "cine_segmentation"]

SEGMENT_LABEL = "coronary artery"
MANUFACTURER = "LightVessel-MONAI"


def _one_frame_view(source: Any) -> Any:
    """The source header as highdicom accepts it for one frame: NumberOfFrames 1 and an (unused) empty shared
    functional group, which highdicom looks up for any image whose IOD allows several frames."""
    from pydicom.dataset import Dataset

    view = copy.deepcopy(source)  # a pydicom copy.copy shares the element dict: the changes would reach the source
    view.NumberOfFrames = 1
    shared = Dataset()
    shared.PixelMeasuresSequence = [Dataset()]
    view.SharedFunctionalGroupsSequence = [shared]
    return view


def cine_segmentation(
    source: Any,
    masks: np.ndarray,
    algorithm: str = "LightVessel-MONAI student",
    version: str = "0",
    series_number: int = 900,
) -> Any:
    """The DICOM SEG (a ``highdicom.seg.Segmentation``) of ``masks`` ``(T, H, W)`` over the cine run ``source``.

    Args:
        source: the run's pydicom header (its pixel data is not needed), ``T`` frames of ``H x W``.
        masks: one binary mask per source frame, in source frame order (nonzero = coronary artery).
        algorithm, version: the algorithm identification (name, version) written into the segment.
        series_number: the new SEG series' number.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.pixels import pack_bits
    from pydicom.sr.codedict import codes
    from pydicom.tag import Tag

    logging.getLogger("highdicom").setLevel(logging.WARNING)  # it logs every module it copies at INFO
    masks = np.asarray(masks).astype(bool)
    frames = int(source.get("NumberOfFrames") or 1)
    if masks.shape != (frames, int(source.Rows), int(source.Columns)):
        raise ValueError(f"masks {masks.shape} for a source of {frames} frames of {source.Rows}x{source.Columns}")
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.CoronaryArtery,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=[_one_frame_view(source)],
        pixel_array=masks[:1],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number="0",
        series_description=f"{SEGMENT_LABEL} ({algorithm})",
        omit_empty_frames=False,
    )
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" in shared:  # the view's placeholder: no pixel spacing without a Frame of Reference
        del shared.PixelMeasuresSequence

    first = seg.PerFrameFunctionalGroupsSequence[0]
    per_frame = []
    for number in range(1, frames + 1):
        item = copy.deepcopy(first)
        item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber = number
        content = item.FrameContentSequence[0]
        content.DimensionIndexValues = [1, number]  # segment 1, temporal position `number`
        content.TemporalPositionIndex = number
        per_frame.append(item)
    seg.PerFrameFunctionalGroupsSequence = per_frame
    temporal = Dataset()
    temporal.DimensionOrganizationUID = seg.DimensionIndexSequence[0].DimensionOrganizationUID
    temporal.DimensionIndexPointer = Tag("TemporalPositionIndex")
    temporal.FunctionalGroupPointer = Tag("FrameContentSequence")
    temporal.DimensionDescriptionLabel = "Temporal Position Index"
    seg.DimensionIndexSequence.append(temporal)
    seg.NumberOfFrames = frames
    seg.PixelData = pack_bits(masks.astype(np.uint8))  # BINARY: 1 bit per pixel, frames packed back to back
    return seg
