"""The official French rule releases: which one an invoice gets, the release
each finding names, and a release run in shadow."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from invoicing_common.rules import DEFAULT_FILE, ReleaseConfigError, UnknownRelease, load_book, parse_book
from invoicing_validate.validation import Validator
from tests.validators import make_validator

ReadSample = Callable[[str], bytes]

TODAY = dt.date(2026, 12, 1)
_PLAIN_NOTE = (
    "<cbc:Note>Pénalités de retard : trois fois le taux d'intérêt légal."
    " Indemnité forfaitaire pour frais de recouvrement : 40 EUR.</cbc:Note>"
)
# The three mentions BR-FR-05 asks for, each under its subject code.
_CODED_NOTES = (
    "<cbc:Note>#PMT#Indemnité forfaitaire pour frais de recouvrement : 40 EUR.</cbc:Note>"
    "<cbc:Note>#PMD#Pénalités de retard : trois fois le taux d'intérêt légal.</cbc:Note>"
    "<cbc:Note>#AAB#Pas d'escompte pour paiement anticipé.</cbc:Note>"
)


def _ubl(read_sample: ReadSample, issued: str, coded_notes: bool = False) -> bytes:
    text = read_sample("ubl-invoice-valid.xml").decode("utf-8")
    assert _PLAIN_NOTE in text and "<cbc:IssueDate>2025-03-14</cbc:IssueDate>" in text
    text = text.replace("<cbc:IssueDate>2025-03-14</cbc:IssueDate>", f"<cbc:IssueDate>{issued}</cbc:IssueDate>", 1)
    if coded_notes:
        text = text.replace(_PLAIN_NOTE, _CODED_NOTES, 1)
    return text.encode("utf-8")


# --- the release book ---------------------------------------------------------

_BOOK = """
[[release]]
version = "A"
published = 2025-01-01
valid_from = 2025-01-01
valid_to = 2025-06-30
ubl = "a/ubl.xslt"
cii = "a/cii.xslt"

[[release]]
version = "B"
published = 2025-07-01
valid_from = 2025-07-01
ubl = "b/ubl.xslt"
cii = "b/cii.xslt"

[[release]]
version = "C"
published = 2025-09-01
profiles = ["urn:example:fr-ctc:release-c"]
ubl = "c/ubl.xslt"
cii = "c/cii.xslt"
"""


def test_the_issue_date_picks_the_release_whose_window_holds_it() -> None:
    book = parse_book(_BOOK)
    assert book.choose("2025-03-01", TODAY).release.version == "A"
    assert book.choose("2025-06-30", TODAY).release.version == "A"
    assert book.choose("2025-07-01", TODAY).release.version == "B"
    assert book.choose("2025-07-01", TODAY).selection == "issue-date"


def test_a_date_outside_every_window_or_unreadable_gets_the_release_in_force_today() -> None:
    book = parse_book(_BOOK)
    for issued in ("2024-12-31", "", "14/03/2025", "2025-02-30"):
        choice = book.choose(issued, TODAY)
        assert (choice.release.version, choice.selection) == ("B", "in-force"), issued
    assert book.choose("2024-12-31", dt.date(2025, 2, 1)).release.version == "A"


def test_a_profile_that_names_a_release_gets_it_whatever_the_date() -> None:
    book = parse_book(_BOOK)
    choice = book.choose("2025-03-01", TODAY, profile=" urn:example:fr-ctc:release-c ")
    assert (choice.release.version, choice.selection) == ("C", "profile")
    assert (
        book.choose("2025-03-01", TODAY, requested="B", profile="urn:example:fr-ctc:release-c").release.version == "B"
    )
    assert book.choose("2025-03-01", TODAY, profile="urn:cen.eu:en16931:2017").release.version == "A"


def test_a_release_without_a_window_runs_only_when_asked_for() -> None:
    book = parse_book(_BOOK)
    assert all(book.choose(d, TODAY).release.version != "C" for d in ("2025-09-01", "2026-12-01"))
    choice = book.choose("2025-03-01", TODAY, requested="C")
    assert (choice.release.version, choice.selection) == ("C", "requested")
    with pytest.raises(UnknownRelease, match=r"known: A, B, C"):
        book.choose("2025-03-01", TODAY, requested="9.9")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("valid_to = 2025-06-30\n", "valid_to = 2025-07-01\n"), "windows of releases A and B overlap"),
        (("valid_to = 2025-06-30\n", ""), "windows of releases A and B overlap"),
        (("valid_from = 2025-01-01\n", 'valid_from = "2025-01-01"\n'), "release A: 'valid_from' must be a date"),
        (('ubl = "b/ubl.xslt"\n', ""), "release B: 'ubl' is required"),
        (('ubl = "b/ubl.xslt"\n', 'ubl = "../b/ubl.xslt"\n'), "release B: 'ubl' must be a path inside"),
        (('version = "C"\n', 'version = "C"\nvalid_form = 2025-09-01\n'), "release C: unknown field(s) valid_form"),
        (('version = "C"\n', 'version = "B"\n'), "release B is listed twice"),
        (
            ('version = "B"\n', 'version = "B"\nprofiles = ["urn:example:fr-ctc:release-c"]\n'),
            "profile 'urn:example:fr-ctc:release-c' names releases B and C",
        ),
        (('profiles = ["urn:example:fr-ctc:release-c"]', 'profiles = "x"'), "release C: 'profiles' must be a list"),
        (("valid_from = 2025-07-01\n", "valid_from = 2025-07-01\nvalid_to = 2025-06-01\n"), "release B: 'valid_to'"),
    ],
)
def test_a_wrong_release_book_is_refused_naming_the_release_and_field(edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in _BOOK
    with pytest.raises(ReleaseConfigError) as caught:
        parse_book(_BOOK.replace(old, new, 1), "book.toml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("book.toml")


def test_the_shipped_book_lists_the_official_releases_with_their_files(validator: Validator) -> None:
    book = load_book()
    assert book.versions == ["0.1", "1.2.0", "1.3.0"]
    for release in book.releases:
        for kind in ("ubl", "cii", "cdar", "extended-ubl", "extended-cii"):
            assert (validator.artefacts.cache_dir / release.file(kind)).is_file(), (release.version, kind)
    assert book.in_force(TODAY).version == "1.3.0"


# --- the engine ---------------------------------------------------------------


def test_the_same_invoice_on_two_dates_is_checked_with_two_releases(
    validator: Validator, read_sample: ReadSample
) -> None:
    summer = validator.validate(_ubl(read_sample, "2025-09-01"), profile="fr-ctc", today=TODAY)
    spring = validator.validate(_ubl(read_sample, "2026-03-02"), profile="fr-ctc", today=TODAY)
    assert (summer.rules_release, summer.rules_selection) == ("0.1", "issue-date")
    assert (spring.rules_release, spring.rules_selection) == ("1.3.0", "issue-date")
    # 0.1 made the three payment mentions of BR-FR-05 mandatory; 1.3.0 warns.
    assert not summer.valid and spring.valid
    french = [f for f in summer.findings if f.rule.startswith("BR-FR")]
    assert french and {f.release for f in french} == {"BR-FR 0.1"}
    assert {f.release for f in spring.findings if f.rule.startswith("BR-FR")} == {"BR-FR 1.3.0"}


def test_a_requested_release_wins_and_implies_the_french_rules(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(_ubl(read_sample, "2026-03-02"), rules_version="0.1", today=TODAY)
    assert (report.profile, report.rules_release, report.rules_selection) == ("fr-ctc", "0.1", "requested")
    assert not report.valid
    with pytest.raises(UnknownRelease):
        validator.validate(_ubl(read_sample, "2026-03-02"), rules_version="7.0", today=TODAY)


def test_without_the_french_rules_no_release_is_recorded(validator: Validator, read_sample: ReadSample) -> None:
    report = validator.validate(read_sample("ubl-invoice-valid.xml"), today=TODAY)
    assert (report.rules_release, report.shadow) == ("", None)
    assert {f.release for f in report.findings} <= {"", "EN16931 1.3.16"}


@pytest.fixture(scope="module")
def shadowed() -> Validator:
    """1.3.0 in force, 0.1 (stricter on the payment mentions) in shadow."""
    return Validator(make_validator().artefacts.cache_dir, shadow="0.1")


def test_a_stricter_shadow_release_reports_exactly_the_invoices_it_would_reject(
    shadowed: Validator, validator: Validator, read_sample: ReadSample
) -> None:
    documents = {
        "plain notes": _ubl(read_sample, "2026-03-02"),
        "coded notes": _ubl(read_sample, "2026-03-02", coded_notes=True),
        "plain notes, later": _ubl(read_sample, "2026-11-30"),
        "coded, broken total": _ubl(read_sample, "2026-03-02", coded_notes=True).replace(
            b'<cbc:PayableAmount currencyID="EUR">828.00<', b'<cbc:PayableAmount currencyID="EUR">829.00<'
        ),
    }
    disagreements = set()
    for name, data in documents.items():
        report = shadowed.validate(data, profile="fr-ctc", today=TODAY)
        # The shadow never changes the verdict: the same as without it.
        alone = validator.validate(data, profile="fr-ctc", today=TODAY)
        assert report.valid == alone.valid, name
        assert report.rules_release == "1.3.0"
        assert report.shadow is not None and report.shadow.release == "0.1"
        # Its verdict is the one 0.1 gives when asked for directly.
        assert report.shadow.valid == validator.validate(data, rules_version="0.1", today=TODAY).valid, name
        if report.shadow.disagrees(report.valid):
            disagreements.add(name)
            assert report.shadow.only_shadow == ["BR-FR-05"], name
    assert disagreements == {"plain notes", "plain notes, later"}


def test_no_shadow_outcome_when_the_invoice_already_gets_the_shadow_release(
    shadowed: Validator, read_sample: ReadSample
) -> None:
    report = shadowed.validate(_ubl(read_sample, "2025-09-01"), profile="fr-ctc", today=TODAY)
    assert report.rules_release == "0.1" and report.shadow is None


def test_an_unknown_shadow_release_is_refused_at_start(validator: Validator) -> None:
    with pytest.raises(UnknownRelease, match=r"'2\.0'"):
        Validator(validator.artefacts.cache_dir, shadow="2.0")


def test_an_invoice_whose_profile_names_a_release_is_checked_with_it(
    validator: Validator, read_sample: ReadSample
) -> None:
    shipped = (DEFAULT_FILE).read_text(encoding="utf-8")
    fr_ctc = "urn:cen.eu:en16931:2017#compliant#urn.cpro.gouv.fr:1p0:einvoicingF2"
    anchor = 'version = "0.1"\n'
    assert anchor in shipped
    book = parse_book(shipped.replace(anchor, f'{anchor}profiles = ["{fr_ctc}"]\n', 1))
    pinned = Validator(validator.artefacts.cache_dir, releases=book)
    document = _ubl(read_sample, "2026-03-02").replace(
        b"<cbc:CustomizationID>urn:cen.eu:en16931:2017</cbc:CustomizationID>",
        f"<cbc:CustomizationID>{fr_ctc}</cbc:CustomizationID>".encode(),
    )
    report = pinned.validate(document, today=TODAY)
    assert (report.profile, report.rules_release, report.rules_selection) == ("fr-ctc", "0.1", "profile")
    assert validator.validate(document, today=TODAY).rules_release == "1.3.0"
