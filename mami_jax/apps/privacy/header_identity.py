"""Removing who an image is of from its file's header, beside the protection of its pixels.

``protect`` changes pixels; by default the protected copy keeps every DICOM data element
and the NIfTI header as the input had them (``metadata.identity = "keep"``), because a
site usually de-identifies headers with its own tool and profile. ``"remove"`` does it
here, after the copy is written, so that a shared folder names nobody:

- DICOM (each file of a series, the slices the model never read included): the
  attributes of people, institutions, devices and dates that DICOM PS3.15's Basic
  Application Level Confidentiality Profile lists (``IDENTIFYING``) are emptied wherever
  they occur, nested sequences included, as is every person name, date and time (value
  representations PN, DA, DT, TM, whichever attribute holds them); sequences of them
  (other patient IDs, the request's attributes, the values before an earlier edit),
  private elements, overlay planes and curves (groups 60xx and 50xx: bitmaps and text
  drawn over the image, which the profile removes) are removed; every UID (study,
  series, instance, frame of reference, the file meta's) is replaced by a keyed hash of
  it (``derived_uids``), so the slices of a series still belong together and to their
  study, but nobody without the protection's key can link a copy to its original; ``PatientIdentityRemoved`` = YES and
  ``DeidentificationMethod`` say what was done. Pixel-related elements are untouched,
  so the copy decodes as before.
- NIfTI: the free-text header fields (``descrip``, ``aux_file``, ``intent_name``,
  ``db_name``) are blanked, and the header extensions removed (free-form blocks after the
  header: a converter's copy of the DICOM header, with the patient's name, AFNI's
  history, comments); a NIfTI header has no other field for a name or date.
- PNG / JPEG / TIFF: ``writers`` never copies their text chunks or EXIF (only EXIF's
  Orientation, which names nobody), so nothing is left.

Text burned into the pixels (a name in a corner of an X-ray) is not found here; the
identity-cue maps show where a model looks, not where text is. What a DICOM header says
about it is passed on: ``says_burned_in_text`` reads its BurnedInAnnotation, each protect
record keeps it, and ``protect`` ends with a warning naming such images.
"""

from __future__ import annotations

import numpy as np

from mami_jax.apps.privacy.derived_uids import DEIDENTIFIED, derived_uid
from mami_jax.apps.privacy.writers import WriteError, save_nifti
from mami_jax.data import decode
from mami_jax.data.natural_order import examples
from mami_jax.runtime.atomic_files import write_atomic

IDENTITY_SETTINGS = ("keep", "remove")

#: Value representations whose every element names or dates someone, whichever attribute it
#: is (a consulting physician, an SR's verifying observer, a birth date, an arrival time):
#: emptied wherever found. The Basic Profile removes or replaces every such attribute.
EMPTIED_VRS = ("PN", "DA", "DT", "TM")

#: Other data elements that identify a person, an institution, a device or a visit
#: (keywords of the DICOM dictionary; PS3.15 Annex E, Basic Profile): emptied where they
#: are not sequences.
IDENTIFYING = (
    "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "PatientSex", "PatientAge",
    "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers",
    "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
    "AdditionalPatientHistory", "PatientComments", "MedicalRecordLocator",
    "CountryOfResidence", "RegionOfResidence", "PatientReligiousPreference",
    "PatientBirthDateInAlternativeCalendar", "PatientDeathDateInAlternativeCalendar",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ResponsibleOrganization", "PersonAddress", "PersonTelephoneNumbers",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "AccessionNumber", "StudyID", "StudyDescription", "SeriesDescription", "ProtocolName",
    "ImageComments",
    # the visit, the order and its procedure steps: IDs, places, free text
    "AdmissionID", "IssuerOfAdmissionID", "CurrentPatientLocation", "PatientState",
    "PatientInstitutionResidence", "PatientTransportArrangements", "SpecialNeeds",
    "MedicalAlerts", "Allergies", "AdmittingDiagnosesDescription", "VisitComments",
    "StudyComments", "ReasonForStudy", "RequestingService", "RequestedProcedureID",
    "RequestedProcedureDescription", "RequestedProcedureComments",
    "ImagingServiceRequestComments", "PlacerOrderNumberImagingServiceRequest",
    "FillerOrderNumberImagingServiceRequest", "OrderEntererLocation",
    "OrderCallbackPhoneNumber", "ScheduledProcedureStepID",
    "ScheduledProcedureStepDescription", "ScheduledProcedureStepLocation",
    "ScheduledStationName", "ScheduledStudyLocation", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "PerformedStationName", "PerformedLocation",
    # the acquisition's devices and free text
    "DeviceSerialNumber", "DeviceID", "DeviceDescription", "DetectorID", "GantryID",
    "PlateID", "CassetteID", "SourceSerialNumber", "SecondaryCaptureDeviceID",
    "AcquisitionComments", "FrameComments", "InterpretationText", "TextString",
    "TextComments", "TopicSubject", "TopicAuthor", "TopicKeywords",
)

#: Sequences that only hold identifying attributes: removed whole.
IDENTIFYING_SEQUENCES = (
    "OtherPatientIDsSequence", "ReferencedPatientSequence", "RequestAttributesSequence",
    "PatientInsurancePlanCodeSequence", "ReferencedStudySequence",
    "InstitutionCodeSequence", "IssuerOfAccessionNumberSequence",
    "ReferringPhysicianIdentificationSequence", "PhysiciansOfRecordIdentificationSequence",
    "PerformingPhysicianIdentificationSequence",
    "PhysiciansReadingStudyIdentificationSequence", "OperatorIdentificationSequence",
    "InterpretationApproverSequence", "AuthorObserverSequence", "ParticipantSequence",
    # the values attributes had before an earlier edit: a patient's old name among them
    "OriginalAttributesSequence",
)

#: First groups of the repeating overlay (60xx) and curve (50xx) groups.
OVERLAY_AND_CURVE_GROUPS = (0x6000, 0x5000)

#: UIDs that identify this study, series, image or frame of reference (a site's records can
#: be searched by them), not those that name a standard (SOP class, transfer syntax).
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                 "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "IrradiationEventUID",
                 "SynchronizationFrameOfReferenceUID", "ConcatenationUID",
                 "DimensionOrganizationUID")

#: The NIfTI (and Analyze) header fields of free text.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

#: DeidentificationMethod (a LO: at most 64 characters).
METHOD = "mami_jax privacy protect, PS3.15 Basic Profile attributes"


def check_identity_setting(value) -> None:
    if value not in IDENTITY_SETTINGS:
        raise ValueError(f"metadata.identity={value!r}: expected one of {IDENTITY_SETTINGS}")


def remove_identity(path: str, uid_key: bytes) -> int:
    """Removes identifying header data from the protected copy at ``path`` (a file, or a
    series / slice folder), rewriting each file all-or-nothing; returns how many data
    elements or header fields it emptied, removed or replaced. DICOM UIDs are replaced by
    keyed hashes under ``uid_key`` (``derived_uids``: one key for a whole protection keeps
    its studies and series together). A file it cannot rewrite is a ``WriteError`` naming
    it."""
    try:
        volume = decode.open_volume(path)
        if isinstance(volume, decode.NiftiVolume):
            return _nifti(path)
        if isinstance(volume, decode.DicomFile):
            return _dicom_file(path, uid_key)
        if isinstance(volume, decode.DicomSeries):
            return sum(_dicom_file(f, uid_key) for f in volume.files)
        return 0
    except Exception as e:  # noqa: BLE001 - re-raised naming the file
        raise WriteError(f"{path}: cannot remove the identifying header data of this "
                         f"protected copy: {type(e).__name__}: {e}") from e


def says_burned_in_text(path: str) -> bool:
    """Whether the DICOM file at ``path`` (or any file of a series folder) says its pixels
    hold burned-in text (BurnedInAnnotation YES: a name, a date, an ID written into the
    image); False for other formats, which cannot say."""
    import pydicom
    volume = decode.open_volume(path)
    files = volume.files if isinstance(volume, decode.DicomSeries) else \
        [path] if isinstance(volume, decode.DicomFile) else []
    return any(str(pydicom.dcmread(f, stop_before_pixels=True, force=True).get(
        "BurnedInAnnotation", "")).strip().upper() == "YES" for f in files)


def burned_in_warning(records) -> str | None:
    """The line ``protect`` ends with when some of its images say they hold burned-in text."""
    named = [r["image_id"] for r in records if r.get("burned_in_annotation")]
    if not named:
        return None
    return (f"warning: {len(named)} protected image(s) say their pixels hold burned-in text "
            f"(DICOM BurnedInAnnotation YES), which protect neither finds nor removes: "
            f"{examples(named, shown=5)}; check them before sharing")


def _is_overlay_or_curve(tag) -> bool:
    """An element of an overlay plane (groups 6000-601E) or a retired curve (5000-501E):
    bitmaps and text drawn over the image (a name, a marker, a measurement), which the
    profile removes; each plane goes whole, so no half plane is left."""
    return tag.group % 2 == 0 and any(base <= tag.group <= base + 0x1E
                                      for base in OVERLAY_AND_CURVE_GROUPS)


def _dicom_file(path: str, uid_key: bytes) -> int:
    import pydicom
    ds = pydicom.dcmread(path)
    changed = [0]

    def visit(dataset, element):
        if element.keyword in IDENTIFYING_SEQUENCES or _is_overlay_or_curve(element.tag):
            del dataset[element.tag]
            changed[0] += 1
        elif (element.keyword in IDENTIFYING or element.VR in EMPTIED_VRS) \
                and element.VR != "SQ" and not element.is_empty:
            element.value = ""
            changed[0] += 1
        elif element.keyword in INSTANCE_UIDS and not element.is_empty:
            element.value = derived_uid(element.value, DEIDENTIFIED, uid_key)
            changed[0] += 1

    before = len(list(ds.iterall()))
    ds.remove_private_tags()
    changed[0] += before - len(list(ds.iterall()))
    ds.walk(visit)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD

    def write(tmp):
        ds.save_as(tmp)
    write_atomic(path, write)
    return changed[0]


def _nifti(path: str) -> int:
    import nibabel as nib
    img = nib.load(path)
    header = img.header.copy()
    fields = [f for f in NIFTI_TEXT_FIELDS
              if f in header and bytes(header[f].tobytes()).strip(b"\0 ")]
    extensions = getattr(header, "extensions", None) or []
    if not fields and not extensions:
        return 0
    for f in fields:
        header[f] = b""
    removed = len(extensions)
    del extensions[:]
    # the stored values as they are (not read scaled and stored again)
    proxy = img.dataobj
    stored = np.asanyarray(proxy.get_unscaled()) if hasattr(proxy, "get_unscaled") \
        else np.asanyarray(proxy)
    save_nifti(img, stored, path, header=header)
    return len(fields) + removed
