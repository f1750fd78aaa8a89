"""header_identity (``metadata.identity = "remove"``): a protected copy's header names
nobody, its pixels decode exactly as before, and a series keeps belonging together."""

import gzip
import hashlib
import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mami_jax.apps.privacy.derived_uids import DEIDENTIFIED, derived_uid, new_uid_key
from mami_jax.apps.privacy.header_identity import (IDENTIFYING, IDENTIFYING_SEQUENCES,
                                                   INSTANCE_UIDS, burned_in_warning,
                                                   check_identity_setting, remove_identity,
                                                   says_burned_in_text)
from mami_jax.data.decode import open_volume
from tests.test_data_decode import write_dicom

#: One protection's UID key (``derived_uids``).
KEY = bytes(range(32))

PERSON = dict(PatientName="Doe^Jane", PatientID="X123", PatientBirthDate="19700101",
              InstitutionName="St Elsewhere", ReferringPhysicianName="House^G",
              StudyDate="20200301", AccessionNumber="A77", StudyInstanceUID="1.2.3.4",
              SeriesInstanceUID="1.2.3.4.5", RescaleSlope=2, RescaleIntercept=-1000,
              WindowCenter=500, WindowWidth=3001)


def _sequence(**attributes) -> Sequence:
    """A sequence of one item holding ``attributes``."""
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return Sequence([item])


def _with_private_and_nested(path):
    """Adds a private element and an identifying attribute inside a sequence."""
    ds = pydicom.dcmread(path)
    ds.add_new(0x00091010, "LO", "scanner owner Doe")
    ds.AnatomicRegionSequence = _sequence(PatientName="Doe^Jane", CodeValue="T-D3000")
    ds.OtherPatientIDsSequence = _sequence(PatientID="OLD-9")
    ds.save_as(path)


def test_a_dicom_file_loses_who_and_when_and_keeps_its_pixels(tmp_path):
    rng = np.random.default_rng(0)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, rng.integers(100, 1400, (16, 16)).astype(np.int16), **PERSON)
    _with_private_and_nested(path)
    before = open_volume(path).read([0])
    original = pydicom.dcmread(path)
    changed = remove_identity(path, KEY)
    ds = pydicom.dcmread(path)
    for key in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName",
                "ReferringPhysicianName", "StudyDate", "AccessionNumber"):
        assert key in ds and str(ds[key].value) == "", key       # type 2: present, empty
    assert str(ds.AnatomicRegionSequence[0].PatientName) == ""
    assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000"  # not identifying: kept
    assert "OtherPatientIDsSequence" not in ds and 0x00091010 not in ds
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        assert ds[key].value != original[key].value and ds[key].value.startswith("2.25.")
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SOPClassUID == original.SOPClassUID                 # names a standard: kept
    assert ds.PatientIdentityRemoved == "YES" and "mami_jax" in ds.DeidentificationMethod
    assert (ds.RescaleSlope, ds.WindowWidth) == (original.RescaleSlope, original.WindowWidth)
    np.testing.assert_array_equal(open_volume(path).read([0]), before)
    # 7 emptied + the nested name + 2 sequences' worth (one removed) + 1 private + 3 UIDs
    assert changed == 7 + 1 + 1 + 1 + 3
    assert remove_identity(path, KEY) == 3      # a second pass finds only UIDs to replace again


def test_every_person_name_and_the_visits_text_ids_and_dates_are_removed(tmp_path):
    """Beyond the patient's own attributes: any person name (PN) under any attribute and at
    any depth, the order's and procedure steps' IDs, text and dates, and the values an
    earlier edit replaced (OriginalAttributesSequence: the old name is in it)."""
    rng = np.random.default_rng(2)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, rng.integers(100, 1400, (16, 16)).astype(np.int16),
                ConsultingPhysicianName="Doe^Consulting", RequestedProcedureDescription=
                "CT chest for Doe", PerformedProcedureStepStartDate="20200301",
                AdmissionID="ADM-Doe-1", DetectorID="DET-Doe")
    ds = pydicom.dcmread(path)
    ds.VerifyingObserverSequence = _sequence(VerifyingObserverName="Doe^Verifier",
                                             VerificationDateTime="20200302")
    ds.OriginalAttributesSequence = _sequence(
        ModifiedAttributesSequence=_sequence(PatientName="Doe^Maiden"),
        ReasonForTheAttributeModification="CORRECT")
    ds.save_as(path)
    remove_identity(path, KEY)
    out = pydicom.dcmread(path)
    assert str(out.ConsultingPhysicianName) == ""
    assert str(out.VerifyingObserverSequence[0].VerifyingObserverName) == ""
    assert str(out.VerifyingObserverSequence[0].VerificationDateTime) == ""   # any DT too
    assert "OriginalAttributesSequence" not in out
    for key in ("RequestedProcedureDescription", "PerformedProcedureStepStartDate",
                "AdmissionID", "DetectorID"):
        assert str(out[key].value) == "", key
    with open(path, "rb") as f:
        assert b"Doe" not in f.read()


def test_overlay_planes_and_curves_are_removed_whole(tmp_path):
    """Overlays (groups 6000-601E: bitmaps and their comments drawn over the image, a name
    among them as often as a marker) and retired curves (5000-501E) go, each plane whole;
    the image's own elements stay."""
    rng = np.random.default_rng(1)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, rng.integers(100, 1400, (16, 16)).astype(np.int16), **PERSON)
    ds = pydicom.dcmread(path)
    for group in (0x6000, 0x6002):
        ds.add_new((group, 0x0010), "US", 16)                     # OverlayRows
        ds.add_new((group, 0x0011), "US", 16)                     # OverlayColumns
        ds.add_new((group, 0x0040), "CS", "G")                    # OverlayType
        ds.add_new((group, 0x0050), "SS", [1, 1])                 # OverlayOrigin
        ds.add_new((group, 0x0100), "US", 1)                      # OverlayBitsAllocated
        ds.add_new((group, 0x0102), "US", 0)                      # OverlayBitPosition
        ds.add_new((group, 0x3000), "OW", np.packbits(np.eye(16, dtype=bool)).tobytes())
        ds.add_new((group, 0x4000), "LT", "patient Doe, bed 4")   # OverlayComments
    ds.add_new((0x5000, 0x0005), "US", 2)                         # CurveDimensions (retired)
    ds.save_as(path)
    before = open_volume(path).read([0])
    changed = remove_identity(path, KEY)
    out = pydicom.dcmread(path)
    assert not [t for t in out.keys() if t.group in (0x5000, 0x6000, 0x6002)]
    with open(path, "rb") as f:
        assert b"bed 4" not in f.read()
    np.testing.assert_array_equal(open_volume(path).read([0]), before)
    assert (out.Rows, out.WindowCenter) == (16, 500)
    # 7 identifying values emptied + 3 UIDs + 2 planes of 8 elements + 1 curve element
    assert changed == 7 + 3 + 2 * 8 + 1


def test_a_series_keeps_one_study_and_one_series(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    for i in range(3):
        write_dicom(str(folder / f"IM{i}"), np.full((4, 4), 10 * i, np.uint16),
                    InstanceNumber=i + 1, ImagePositionPatient=[0, 0, float(i)],
                    ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
                    FrameOfReferenceUID="1.9.9", **PERSON)
    before = open_volume(str(folder)).read([0, 1, 2])
    assert remove_identity(str(folder), KEY) == 3 * (7 + 4)
    files = [pydicom.dcmread(str(folder / f"IM{i}")) for i in range(3)]
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {f[key].value for f in files}
        assert len(values) == 1 and values != {PERSON.get(key, "1.9.9")}, key
    assert len({f.SOPInstanceUID for f in files}) == 3
    assert all(str(f.PatientName) == "" for f in files)
    np.testing.assert_array_equal(open_volume(str(folder)).read([0, 1, 2]), before)


def test_the_new_uids_lead_back_to_the_originals_only_with_the_protections_key(tmp_path):
    """Whoever holds the unprotected archive could compute a public function of each
    archived UID and match the copy's: the replacements are keyed, the same for one key
    (a resumed protection), unrelated under another and to the keyless derivation."""
    copies = {}
    for name, key in (("a", KEY), ("b", KEY), ("c", new_uid_key())):
        path = str(tmp_path / f"{name}.dcm")
        write_dicom(path, np.full((4, 4), 7, np.uint16), SOPInstanceUID="1.2.3.4.5.6", **PERSON)
        remove_identity(path, key)
        copies[name] = pydicom.dcmread(path)
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        a, b, c = (copies[n][uid].value for n in "abc")
        assert a == b and a != c, uid
        original = {"SOPInstanceUID": "1.2.3.4.5.6"}.get(uid, PERSON.get(uid))
        assert a not in (original, derived_uid(original, DEIDENTIFIED)), uid
        assert a == derived_uid(original, DEIDENTIFIED, KEY) and len(a) <= 64, uid


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_a_nifti_header_loses_its_free_text_and_keeps_data_and_scaling(tmp_path, name):
    data = np.random.default_rng(1).integers(-500, 1500, (8, 6, 4)).astype(np.int16)
    img = nib.Nifti1Image(data, np.diag([1.5, 2.0, 3.0, 1.0]))
    img.header["descrip"] = b"Doe^Jane 1970"
    img.header["db_name"] = b"ward 3"
    img.header.set_slope_inter(0.5, -10.0)
    # extensions: free-form blocks after the header (a converter's DICOM header, AFNI's
    # history of commands, comments), a name as likely in them as in descrip
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"scan of Doe^Jane, MRN 4711"))
    img.header.extensions.append(nib.nifti1.Nifti1Extension(4, b"<HISTORY>3dcalc Doe</>"))
    path = str(tmp_path / name)
    nib.save(img, path)
    before = open_volume(path).read([0, 1, 2, 3])
    assert remove_identity(path, KEY) == 2 + 2                      # two fields, two extensions
    out = nib.load(path)
    assert len(out.header.extensions) == 0
    with (gzip.open if name.endswith(".gz") else open)(path, "rb") as f:
        assert b"Doe" not in f.read()
    assert out.header["descrip"].tobytes().strip(b"\0") == b""
    assert out.header["db_name"].tobytes().strip(b"\0") == b""
    np.testing.assert_array_equal(np.asanyarray(out.dataobj.get_unscaled()), data)
    assert (out.dataobj.slope, out.dataobj.inter) == (0.5, -10.0)   # the scaling, kept
    np.testing.assert_array_equal(out.affine, img.affine)
    np.testing.assert_array_equal(open_volume(path).read([0, 1, 2, 3]), before)
    assert sorted(os.listdir(tmp_path)) == [name]              # nothing left beside it
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert remove_identity(path, KEY) == 0                          # nothing more: not rewritten
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest


def test_the_profiles_telecom_reasons_organisations_episode_and_device_ids_are_removed(
        tmp_path):
    """Table E.1-1 attributes beyond names and dates: telecom (e-mail, phone), the reason
    for the procedure, organisations, the service episode, the generator's ID, the
    patient's pregnancy status (a number), inside sequences too; DeviceUID and each value of
    a multi-valued IrradiationEventUID are replaced like the other UIDs; the icon image (a
    thumbnail of the unprotected pixels) is removed."""
    rng = np.random.default_rng(3)
    path = str(tmp_path / "a.dcm")
    write_dicom(path, rng.integers(100, 1400, (16, 16)).astype(np.int16),
                PatientTelecomInformation="jane.doe@example.org +1 555 0100",
                PersonTelecomInformation="+1 555 0199",
                ReasonForTheRequestedProcedure="follow-up of Doe's fall at 12 Elm St",
                VerifyingOrganization="St Elsewhere Hospital",
                HumanPerformerOrganization="St Elsewhere Radiology",
                ServiceEpisodeID="EPISODE-778", GeneratorID="GEN-SN-4411",
                PregnancyStatus=2, DeviceUID="1.2.826.0.1.3680043.2.1125.99",
                IrradiationEventUID=["1.2.3.7.1", "1.2.3.7.2"])
    ds = pydicom.dcmread(path)
    ds.ProcedureCodeSequence = _sequence(CodeValue="CTCHEST", CodeMeaning="CT chest")
    ds.RequestAttributesSequence = _sequence(RequestedProcedureID="R1")
    ds.AnatomicRegionSequence = _sequence(CodeValue="T-D3000",
                                          ClinicalTrialSiteName="Elsewhere trial site")
    icon = Dataset()
    icon.Rows = icon.Columns = 2
    icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
    icon.BitsAllocated = icon.BitsStored = 8
    icon.HighBit, icon.PixelRepresentation = 7, 0
    icon.PixelData = b"Doe!"                   # 2 x 2 pixels that happen to spell a name
    ds.IconImageSequence = Sequence([icon])
    ds.save_as(path)
    before = open_volume(path).read([0])
    changed = remove_identity(path, KEY)
    out = pydicom.dcmread(path)
    for key in ("PatientTelecomInformation", "PersonTelecomInformation",
                "ReasonForTheRequestedProcedure", "VerifyingOrganization",
                "HumanPerformerOrganization", "ServiceEpisodeID", "GeneratorID",
                "PregnancyStatus"):
        assert key in out and out[key].is_empty, key
    assert out.DeviceUID == derived_uid("1.2.826.0.1.3680043.2.1125.99", DEIDENTIFIED, KEY)
    assert list(out.IrradiationEventUID) == [derived_uid(u, DEIDENTIFIED, KEY)
                                             for u in ("1.2.3.7.1", "1.2.3.7.2")]
    assert str(out.AnatomicRegionSequence[0].ClinicalTrialSiteName) == ""
    assert out.AnatomicRegionSequence[0].CodeValue == "T-D3000"
    assert out.ProcedureCodeSequence[0].CodeMeaning == "CT chest"    # coded procedure: kept
    assert "IconImageSequence" not in out and "RequestAttributesSequence" not in out
    with open(path, "rb") as f:
        raw = f.read()
    for text in (b"Doe", b"Elsewhere", b"555", b"EPISODE", b"GEN-SN",
                 b"1.2.826.0.1.3680043.2.1125.99", b"1.2.3.7.1", b"1.2.3.7.2"):
        assert text not in raw, text
    np.testing.assert_array_equal(open_volume(path).read([0]), before)
    # 8 emptied + the nested site name + 2 sequences + DeviceUID, IrradiationEventUID
    # and the 2 instance UIDs write_dicom sets (SOP instance, none of study/series)
    assert changed == 8 + 1 + 2 + 2 + 1


ANALYZE_PERSON = {"descrip": b"Doe^Jane 1970", "patient_id": b"PAT-12345",
                  "exp_date": b"20240131", "exp_time": b"101500", "scannum": b"S123",
                  "generated": b"St Elsew"}


@pytest.mark.parametrize("cls", [nib.AnalyzeImage, nib.Spm2AnalyzeImage])
def test_an_analyze_pair_loses_its_patient_id_and_exam_date_and_keeps_its_origin(
        tmp_path, cls):
    """An Analyze 7.5 .hdr/.img pair (OASIS's format; nibabel loads either kind as SPM2)
    names the patient and the exam in its data_history fields, not only in descrip: all
    are blanked and counted; SPM's origin (the affine's translation) stays."""
    data = np.random.default_rng(4).integers(0, 1000, (8, 6, 4)).astype(np.int16)
    affine = np.array([[2.0, 0, 0, -6], [0, 2.0, 0, -4], [0, 0, 3.0, -3], [0, 0, 0, 1]])
    img = cls(data, affine)
    for field, value in ANALYZE_PERSON.items():
        img.header[field] = value
    path = str(tmp_path / "v.img")
    nib.save(img, path)
    loaded = nib.load(path)
    assert isinstance(loaded, nib.Spm2AnalyzeImage)
    before = open_volume(path).read([0, 1, 2, 3])
    assert remove_identity(path, KEY) == len(ANALYZE_PERSON)
    out = nib.load(path)
    for field in ANALYZE_PERSON:
        assert out.header[field].tobytes().strip(b"\0") == b"", field
    with open(str(tmp_path / "v.hdr"), "rb") as f:
        raw = f.read()
    for value in ANALYZE_PERSON.values():
        assert value not in raw, value
    np.testing.assert_array_equal(out.affine, loaded.affine)
    np.testing.assert_array_equal(out.header["origin"], loaded.header["origin"])
    np.testing.assert_array_equal(np.asanyarray(out.dataobj), data)
    np.testing.assert_array_equal(open_volume(path).read([0, 1, 2, 3]), before)
    # nibabel writes SPM's affine beside an SPM header (v.mat): numbers, no name
    assert {"v.hdr", "v.img"} <= set(os.listdir(tmp_path)) <= {"v.hdr", "v.img", "v.mat"}
    assert remove_identity(path, KEY) == 0


def test_a_plain_analyze_headers_text_originator_is_blanked_too(tmp_path, monkeypatch):
    """Read as a plain Analyze 7.5 header, ``originator`` is text (who made the image) and
    goes with the other data_history fields; only SPM reads those bytes as an origin."""
    img = nib.AnalyzeImage(np.ones((4, 4, 2), np.int16), np.eye(4))
    img.header["originator"] = b"Dr Doe"
    img.header["patient_id"] = b"PAT-12345"
    path = str(tmp_path / "v.img")
    nib.save(img, path)
    monkeypatch.setattr(nib, "load", nib.AnalyzeImage.from_filename)
    assert remove_identity(path, KEY) == 2
    out = nib.AnalyzeImage.from_filename(path)
    assert out.header["originator"].tobytes().strip(b"\0") == b""
    assert out.header["patient_id"].tobytes().strip(b"\0") == b""
    with open(str(tmp_path / "v.hdr"), "rb") as f:
        assert b"Doe" not in f.read()


def test_a_file_it_cannot_rewrite_is_an_error_naming_it(tmp_path, monkeypatch):
    from mami_jax.apps.privacy.writers import WriteError
    path = str(tmp_path / "a.dcm")
    write_dicom(path, np.zeros((4, 4), np.uint16), PatientName="Doe^Jane")
    before = open(path, "rb").read()

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(pydicom.Dataset, "save_as", full_disk)
    with pytest.raises(WriteError, match=rf"^{path}: cannot remove the identifying header "
                                         r"data of this protected copy: OSError"):
        remove_identity(path, KEY)
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["a.dcm"]


def test_the_setting_is_checked_and_the_lists_name_dicom_attributes():
    check_identity_setting("keep")
    check_identity_setting("remove")
    with pytest.raises(ValueError, match=r"metadata.identity='strip': expected one of"):
        check_identity_setting("strip")
    from pydicom.datadict import tag_for_keyword
    names = IDENTIFYING + IDENTIFYING_SEQUENCES + INSTANCE_UIDS
    assert [k for k in names if tag_for_keyword(k) is None] == []


def test_images_that_say_they_hold_burned_in_text_are_named(tmp_path):
    """BurnedInAnnotation YES (a name or date written into the pixels) is what a header can
    say about text protect cannot remove: read from a file or any file of a series."""
    from PIL import Image
    plain, marked = str(tmp_path / "plain.dcm"), str(tmp_path / "marked.dcm")
    write_dicom(plain, np.zeros((4, 4), np.uint16), BurnedInAnnotation="NO")
    write_dicom(marked, np.zeros((4, 4), np.uint16), BurnedInAnnotation="YES")
    series = tmp_path / "series"
    series.mkdir()
    for i, said in enumerate(("NO", "YES")):
        write_dicom(str(series / f"IM{i}"), np.full((4, 4), i, np.uint16), InstanceNumber=i + 1,
                    BurnedInAnnotation=said)
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "a.png")
    assert [says_burned_in_text(p) for p in (plain, marked, str(series), str(tmp_path / "a.png"))] \
        == [False, True, True, False]
    records = [{"image_id": f"img{i}", "burned_in_annotation": i % 2 == 1} for i in range(15)]
    records.append({"image_id": "from_an_older_log"})
    assert burned_in_warning(records[:1]) is None
    assert burned_in_warning(records) == (
        "warning: 7 protected image(s) say their pixels hold burned-in text (DICOM "
        "BurnedInAnnotation YES), which protect neither finds nor removes: img1, img3, img5, "
        "img7, img9 and 2 more; check them before sharing")
