"""Removing who an image is of from its file's header, beside the protection of its pixels.

``protect`` changes pixels; by default the protected copy keeps every DICOM data element
and the NIfTI header as the input had them (``metadata.identity = "keep"``), because a
site usually de-identifies headers with its own tool and profile. ``"remove"`` does it
here, after the copy is written, so that a shared folder names nobody:

- DICOM (each file of a series, the slices the model never read included): the
  attributes of people, institutions, devices, visits and dates that DICOM PS3.15's Basic
  Application Level Confidentiality Profile (Annex E, Table E.1-1) removes or empties
  (``IDENTIFYING``: IDs, addresses, telecom, free-text comments and reasons, institutions
  and organisations, device IDs and serial numbers) are emptied wherever they occur,
  nested sequences included, as is every person name, date and time (value
  representations PN, DA, DT, TM, whichever attribute holds them); sequences of them
  (other patient IDs, the request's attributes, the values before an earlier edit, the
  icon image: a thumbnail of the unprotected pixels), private elements, overlay planes and
  curves (groups 60xx and 50xx: bitmaps and text drawn over the image, which the profile
  removes) are removed; every UID the profile replaces (study, series, instance, frame of
  reference, device, the file meta's: ``INSTANCE_UIDS``) is replaced by a keyed hash of
  it (``derived_uids``), so the slices of a series still belong together and to their
  study, but nobody without the protection's key can link a copy to its original; ``PatientIdentityRemoved`` = YES and
  ``DeidentificationMethod`` say what was done. Kept on purpose: pixel-related elements
  (the copy decodes as before), the geometry (ImagePositionPatient, ImageOrientationPatient)
  and InstanceNumber that order a series (``dicom_series``: dates are not needed for that,
  so they go), SOP class and transfer syntax UIDs (they name a standard), coded anatomy
  and procedure, modality and the scanner's manufacturer and model (shared by many
  sites; they say how the pixels were made).
- NIfTI and Analyze 7.5: the free-text header fields (``descrip``, ``aux_file``,
  ``intent_name``, ``db_name``) are blanked, and the header extensions removed (free-form
  blocks after the header: a converter's copy of the DICOM header, with the patient's
  name, AFNI's history, comments). An Analyze 7.5 header (a .hdr/.img pair, as OASIS
  ships it; nibabel reads it as an SPM2/SPM99/plain Analyze header) also has a
  ``data_history`` block naming the patient and the exam: ``patient_id``, ``exp_date``,
  ``exp_time``, ``scannum``, ``generated`` and, in the plain Analyze header, the text
  ``originator`` (``ANALYZE_HISTORY_FIELDS``), blanked too. SPM's headers (which nibabel
  loads a .hdr as) read ``originator``'s 10 bytes as ``origin``, the voxel at the
  affine's origin: geometry, not text, so it stays. A NIfTI header has none of these
  (its bytes there are other fields) and no other field for a name or date.
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
    # more of Table E.1-1: telecom (e-mail, phone), the patient's other details
    "PatientTelecomInformation", "PersonTelecomInformation", "OrderCallbackTelecomInformation",
    "PatientSexNeutered", "PregnancyStatus", "SmokingStatus", "PatientAlternativeCalendar",
    "InsurancePlanIdentification", "IdentifyingComments", "TimezoneOffsetFromUTC",
    "ConfidentialityConstraintOnPatientDataDescription",
    # organisations and AE titles (a site's network names)
    "VerifyingOrganization", "HumanPerformerOrganization", "PerformedStationAETitle",
    "ScheduledStationAETitle", "ScheduledStudyLocationAETitle",
    # the visit, the order, the results: IDs, issuers, reasons, free text
    "ServiceEpisodeID", "IssuerOfServiceEpisodeID", "ServiceEpisodeDescription",
    "ReasonForTheRequestedProcedure", "ReasonForTheImagingServiceRequest", "ReasonForVisit",
    "RequestedProcedureLocation", "RequestedContrastAgent", "PreMedication", "StudyIDIssuer",
    "ScheduledPatientInstitutionResidence", "DischargeDiagnosisDescription",
    "CommentsOnThePerformedProcedureStep", "SpecimenAccessionNumber",
    "InterpretationID", "InterpretationDiagnosisDescription", "Impressions",
    "ResultsID", "ResultsIDIssuer", "ResultsComments", "DistributionAddress", "Arbitrary",
    # clinical trial: sponsor, site, subject, protocol and committee
    "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialProtocolName",
    "ClinicalTrialSiteID", "ClinicalTrialSiteName", "ClinicalTrialSubjectID",
    "ClinicalTrialSubjectReadingID", "ClinicalTrialTimePointID",
    "ClinicalTrialTimePointDescription", "ClinicalTrialCoordinatingCenterName",
    "ClinicalTrialSeriesID", "ClinicalTrialSeriesDescription",
    "ClinicalTrialProtocolEthicsCommitteeName",
    "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
    # devices (IDs, serials, labels) and the image's other free text
    "GeneratorID", "DeviceLabel", "DeviceAlternateIdentifier", "LongDeviceDescription",
    "UniqueDeviceIdentifier", "ModifyingDeviceID", "ModifyingDeviceManufacturer",
    "AcquisitionDeviceProcessingDescription", "AcquisitionProtocolDescription",
    # (not DerivationDescription: every copy's is dicom_writer's own, saying it is one)
    "AcquisitionContextDescription", "ContributionDescription",
    "ImagePresentationComments", "ModifiedImageDescription",
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
    "OriginalAttributesSequence", "ModifiedAttributesSequence",
    # more of Table E.1-1: people's and organisations' identification, places, stations
    "ConsultingPhysicianIdentificationSequence", "RequestingPhysicianIdentificationSequence",
    "ScheduledPerformingPhysicianIdentificationSequence", "PersonIdentificationCodeSequence",
    "VerifyingObserverIdentificationCodeSequence", "ContentCreatorIdentificationCodeSequence",
    "IntendedRecipientsOfResultsIdentificationSequence", "ResultsDistributionListSequence",
    "ActualHumanPerformersSequence", "ScheduledHumanPerformersSequence",
    "CustodialOrganizationSequence", "InstitutionalDepartmentTypeCodeSequence",
    "IssuerOfPatientIDQualifiersSequence", "IssuerOfAdmissionIDSequence",
    "IssuerOfServiceEpisodeIDSequence", "ReferencedPatientAliasSequence",
    "ReferencedPatientPhotoSequence", "PatientPrimaryLanguageCodeSequence",
    "PatientPrimaryLanguageModifierCodeSequence", "AdmittingDiagnosesCodeSequence",
    "RequestingServiceCodeSequence", "AcquisitionContextSequence",
    "PerformedStationNameCodeSequence", "PerformedStationGeographicLocationCodeSequence",
    "ScheduledStationNameCodeSequence", "ScheduledStationGeographicLocationCodeSequence",
    "UDISequence",
    # a thumbnail of the image: its pixels are not the protected ones
    "IconImageSequence",
    # signatures and MACs (they sign the original values) and encrypted originals
    "DigitalSignaturesSequence", "MACParametersSequence", "ReferencedDigitalSignatureSequence",
    "ReferencedSOPInstanceMACSequence", "EncryptedAttributesSequence",
)

#: First groups of the repeating overlay (60xx) and curve (50xx) groups.
OVERLAY_AND_CURVE_GROUPS = (0x6000, 0x5000)

#: UIDs that identify this study, series, image, frame of reference, device or site (a
#: site's records can be searched by them; Table E.1-1's action U), not those that name a
#: standard (SOP class, transfer syntax). Each value of a multi-valued one is replaced.
INSTANCE_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                 "FrameOfReferenceUID", "ReferencedSOPInstanceUID", "IrradiationEventUID",
                 "SynchronizationFrameOfReferenceUID", "ConcatenationUID",
                 "DimensionOrganizationUID", "DeviceUID", "DoseReferenceUID", "FiducialUID",
                 "InstanceCreatorUID", "LargePaletteColorLookupTableUID",
                 "RelatedFrameOfReferenceUID", "ReferencedFrameOfReferenceUID",
                 "SourceFrameOfReferenceUID", "RequestedSOPInstanceUID",
                 "FailedSOPInstanceUIDList", "StorageMediaFileSetUID", "TransactionUID",
                 "TemplateExtensionCreatorUID", "TemplateExtensionOrganizationUID", "UID",
                 "PresentationDisplayCollectionUID", "PresentationSequenceCollectionUID",
                 "DigitalSignatureUID")

#: The NIfTI (and Analyze) header fields of free text.
NIFTI_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name")

#: The Analyze 7.5 ``data_history`` fields that name the patient, the exam and where it was
#: made (nibabel's AnalyzeHeader, Spm99AnalyzeHeader and Spm2AnalyzeHeader define them; a
#: NIfTI header does not). Blanked only where the header holds them as text: SPM's headers
#: name ``originator``'s bytes ``origin`` (five int16, part of the affine), kept.
ANALYZE_HISTORY_FIELDS = ("patient_id", "exp_date", "exp_time", "scannum", "generated",
                          "originator")

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


def _replaced_uids(value, uid_key: bytes):
    """The keyed replacement of a UID element's value: of each UID where it holds several
    (IrradiationEventUID, FailedSOPInstanceUIDList: VM 1-n), not of their joined text, so
    a UID shared with another element or file gets the same replacement there."""
    if isinstance(value, str):
        return derived_uid(value, DEIDENTIFIED, uid_key)
    return [derived_uid(v, DEIDENTIFIED, uid_key) for v in value]


def _dicom_file(path: str, uid_key: bytes) -> int:
    import pydicom
    from pydicom.valuerep import STR_VR
    ds = pydicom.dcmread(path)
    changed = [0]

    def visit(dataset, element):
        if element.keyword in IDENTIFYING_SEQUENCES or _is_overlay_or_curve(element.tag):
            del dataset[element.tag]
            changed[0] += 1
        elif (element.keyword in IDENTIFYING or element.VR in EMPTIED_VRS) \
                and element.VR != "SQ" and not element.is_empty:
            # a number (PregnancyStatus is a US) is emptied as None, text as ""
            element.value = "" if element.VR in STR_VR else None
            changed[0] += 1
        elif element.keyword in INSTANCE_UIDS and not element.is_empty:
            element.value = _replaced_uids(element.value, uid_key)
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
    """Blanks the free-text and (Analyze 7.5) patient and exam fields of the NIfTI or
    Analyze header at ``path`` and removes its extensions; the data, affine and scaling are
    written back as they were. Returns how many fields and extensions it removed (0, and
    the file left untouched, where there were none)."""
    import nibabel as nib
    img = nib.load(path)
    header = img.header.copy()
    types = header.structarr.dtype.fields
    fields = [f for f in NIFTI_TEXT_FIELDS + ANALYZE_HISTORY_FIELDS
              if f in types and types[f][0].kind == "S"
              and bytes(header[f].tobytes()).strip(b"\0 ")]
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
