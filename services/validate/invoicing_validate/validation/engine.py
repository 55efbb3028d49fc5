"""Orchestration: which checks a document gets, in which order.

Order: container (PDF) -> hardened parse -> document type -> XSD -> business
rules (schematron) -> French identifiers. Everything that can run does, so
one report lists all problems; business rules run even when the XSD fails,
as long as the document is well-formed and of a known type.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Final

from invoicing_common.rules import Choice, ReleaseBook, RuleRelease

from .artefacts import EN16931_RELEASE, Artefacts, release_key
from .embedded import MAX_EMBEDDED_BYTES, MAX_EMBEDDED_FILES, AttachmentCollector
from .formats import classify_root, extract_pdf_xml, is_pdf
from .identifiers import check_identifiers
from .model import (
    FATAL,
    FORMAT_CII,
    FORMAT_FACTURX_PDF,
    FORMAT_UBL_CREDIT_NOTE,
    FORMAT_UBL_INVOICE,
    FORMAT_UNKNOWN,
    WARNING,
    DocumentRejected,
    Finding,
    ShadowOutcome,
    Summary,
    ValidationReport,
)
from .parsing import RELEASE_ABOVE_CHARS, parse_xml, release_freed_memory, serialise_for_xslt
from .schematron import SchematronError, SchematronSet
from .summary import extract_summary
from .xsd import SchemaSet

logger = logging.getLogger(__name__)

# A release of the French rules to run beside the one in force, in shadow.
ENV_RULES_SHADOW: Final = "VALIDATE_RULES_SHADOW"

PROFILE_EN16931: Final = "en16931"
PROFILE_FR_CTC: Final = "fr-ctc"
PROFILE_EXTENDED_CTC_FR: Final = "extended-ctc-fr"
FACTURX_PROFILES: Final = ("minimum", "basicwl", "basic", "en16931", "extended")
KNOWN_PROFILES: Final = frozenset({PROFILE_EN16931, PROFILE_FR_CTC, PROFILE_EXTENDED_CTC_FR, *FACTURX_PROFILES})

# BT-24 values naming a Factur-X (or ZUGFeRD 2.x) profile. The bare
# "urn:cen.eu:en16931:2017" is EN 16931 itself; it is taken as the Factur-X
# EN16931 profile only inside a Factur-X PDF.
_BT24_FACTURX: Final = {
    "urn:factur-x.eu:1p0:minimum": "minimum",
    "urn:zugferd.de:2p0:minimum": "minimum",
    "urn:factur-x.eu:1p0:basicwl": "basicwl",
    "urn:zugferd.de:2p0:basicwl": "basicwl",
    "urn:cen.eu:en16931:2017#compliant#urn:factur-x.eu:1p0:basic": "basic",
    "urn:cen.eu:en16931:2017#compliant#urn:zugferd.de:2p0:basic": "basic",
    "urn:cen.eu:en16931:2017#conformant#urn:factur-x.eu:1p0:extended": "extended",
    "urn:cen.eu:en16931:2017#conformant#urn:zugferd.de:2p0:extended": "extended",
}
_BT24_EN16931: Final = "urn:cen.eu:en16931:2017"
# French CTC specification identifiers all live under this authority.
_FR_CTC_MARKER: Final = "cpro.gouv.fr"
_XMP_LEVELS: Final = {
    "minimum": "minimum",
    "basicwl": "basicwl",
    "basic": "basic",
    "en16931": "en16931",
    "comfort": "en16931",
    "extended": "extended",
}


# The plan names the French rules by kind; the release picked for the
# invoice supplies the stylesheets.
_FRENCH_KINDS: Final = {
    "fr-ctc-ubl": "ubl",
    "fr-ctc-cii": "cii",
    "extended-ctc-fr-ubl": "extended-ubl",
    "extended-ctc-fr-cii": "extended-cii",
}
_CEN_RELEASE: Final = f"EN16931 {EN16931_RELEASE}"


@dataclass(frozen=True)
class Plan:
    """The checks chosen for one document."""

    profile: str
    xsd: str
    schematrons: tuple[str, ...]


def plan_checks(fmt: str, bt24: str, requested: str | None, in_pdf: bool) -> Plan:
    bt24 = bt24.strip()
    fr_ctc = requested == PROFILE_FR_CTC or _FR_CTC_MARKER in bt24
    extended_ctc_fr = requested == PROFILE_EXTENDED_CTC_FR or bt24.endswith(":extended-ctc-fr")
    if fmt in (FORMAT_UBL_INVOICE, FORMAT_UBL_CREDIT_NOTE):
        xsd = "ubl-invoice" if fmt == FORMAT_UBL_INVOICE else "ubl-creditnote"
        if extended_ctc_fr:
            return Plan(PROFILE_EXTENDED_CTC_FR, xsd, ("extended-ctc-fr-ubl", "fr-ctc-ubl"))
        if fr_ctc:
            return Plan(PROFILE_FR_CTC, xsd, ("en16931-ubl", "fr-ctc-ubl"))
        return Plan(PROFILE_EN16931, xsd, ("en16931-ubl",))

    if extended_ctc_fr:
        return Plan(
            PROFILE_EXTENDED_CTC_FR,
            "cii-d22b-extended-ctc-fr",
            ("extended-ctc-fr-cii", "fr-ctc-cii"),
        )
    facturx: str | None
    if requested in FACTURX_PROFILES:
        # Outside a PDF "en16931" means the CEN rules, not the Factur-X profile.
        facturx = requested if (requested != PROFILE_EN16931 or in_pdf) else None
    elif in_pdf and bt24 == _BT24_EN16931:
        facturx = PROFILE_EN16931
    else:
        facturx = _BT24_FACTURX.get(bt24)
    if facturx is None:
        # Plain EN 16931 CII (or an unknown CIUS): CEN rules on D16B.
        rules: tuple[str, ...] = ("en16931-cii",)
        profile, xsd = PROFILE_EN16931, "cii-d16b"
    elif facturx in ("minimum", "basicwl"):
        # Not EN 16931 compliant profiles: only their own rules apply.
        rules, profile, xsd = (f"facturx-{facturx}",), facturx, f"facturx-{facturx}"
    elif facturx == "extended":
        # "Conformant", not compliant: the CEN rules would reject legal
        # EXTENDED content, the profile schematron carries adapted ones.
        rules, profile, xsd = ("facturx-extended",), facturx, "facturx-extended"
    else:
        rules = ("en16931-cii", f"facturx-{facturx}")
        profile, xsd = facturx, f"facturx-{facturx}"
    if fr_ctc and facturx != "minimum":
        rules, profile = (*rules, "fr-ctc-cii"), PROFILE_FR_CTC
    return Plan(profile, xsd, rules)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    # CEN and Factur-X schematrons share many rules; report each hit once.
    seen: set[tuple[str, str, str]] = set()
    out: list[Finding] = []
    for f in findings:
        key = (f.rule, f.location, f.severity)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


class Validator:
    """Holds the compiled schemas and stylesheets; build one per process.

    ``shadow``: a French rules release run beside the one each invoice
    gets; it never changes a verdict, the report says where they differ.
    ``releases``: the release book (default: RULES_RELEASES_FILE or the
    one shipped).
    """

    def __init__(
        self, artefacts_dir: Path | None = None, shadow: str | None = None, releases: ReleaseBook | None = None
    ) -> None:
        self.artefacts = Artefacts.locate(artefacts_dir, releases)
        self.releases = self.artefacts.releases
        # Raises UnknownRelease at start rather than on the first invoice.
        self.shadow: RuleRelease | None = self.releases.get(shadow) if shadow else None
        self._schemas = SchemaSet(self.artefacts.xsd)
        self._schematrons = SchematronSet(self.artefacts.xslt)
        # The common cases are compiled up front so the first document is
        # not slow; profile-specific stylesheets compile on first use.
        self._schematrons.preload(["en16931-ubl", "en16931-cii"])
        self._schemas.preload(["ubl-invoice", "ubl-creditnote", "cii-d16b"])

    def preload(self, schematrons: list[str], schemas: list[str]) -> None:
        """Compile these stylesheets and schemas now rather than on first use."""
        self._schematrons.preload(schematrons)
        self._schemas.preload(schemas)

    def preload_all(self) -> None:
        """Compile every schema and stylesheet now (about 10 s)."""
        self._schemas.preload()
        self._schematrons.preload()

    @property
    def versions(self) -> dict[str, str]:
        return {
            "en16931-ubl": self.artefacts.schematron_version("en16931-ubl"),
            "en16931-cii": self.artefacts.schematron_version("en16931-cii"),
            "br-fr": ", ".join(self.releases.versions),
        }

    def validate(
        self,
        data: bytes,
        filename: str = "",
        profile: str | None = None,
        rules_version: str | None = None,
        today: dt.date | None = None,
    ) -> ValidationReport:
        """Validate one document. Never raises because of the document's content.

        ``filename`` is informative only (logs); the content decides the format.
        ``profile`` forces a rule set: "fr-ctc" adds the French CTC rules,
        a Factur-X profile name overrides the CII document's BT-24.
        ``rules_version`` forces a release of the French rules (and so the
        French rules themselves); otherwise the invoice's issue date picks
        it. ``today`` stands for the current date (tests).
        """
        if profile is not None and profile not in KNOWN_PROFILES:
            raise ValueError(f"unknown profile {profile!r}; known: {sorted(KNOWN_PROFILES)}")
        if rules_version is not None:
            self.releases.get(rules_version)  # UnknownRelease names the known ones
            profile = profile or PROFILE_FR_CTC
        state = _State(requested_release=rules_version, today=today or dt.datetime.now(dt.UTC).date())
        try:
            self._run(data, profile, state)
        except DocumentRejected as rejected:
            state.findings.append(rejected.finding)
        except Exception as exc:
            logger.exception("validation failed unexpectedly for %r", filename)
            state.findings.append(
                Finding(
                    rule="INTERNAL",
                    severity=FATAL,
                    location="",
                    message=f"the document could not be validated: {type(exc).__name__}",
                )
            )
        findings = _dedupe([*state.findings, *state.attachments.findings])
        valid = not any(f.severity == FATAL for f in findings)
        return ValidationReport(
            valid=valid,
            format=state.format,
            profile=state.profile,
            findings=findings,
            summary=state.summary,
            attachments=state.attachments.files,
            rules_release=state.choice.release.version if state.choice else "",
            rules_selection=state.choice.selection if state.choice else "",
            shadow=_shadow_outcome(state, findings, valid),
        )

    def _run_rules(self, key: str, node: object, choice: Choice | None) -> list[Finding]:
        """One stylesheet's findings, each naming the release that fired it."""
        kind = _FRENCH_KINDS.get(key)
        if kind is not None and choice is not None:
            release = choice.release
            return [replace(f, release=release.label) for f in self._schematrons.run(release_key(release, kind), node)]
        found = self._schematrons.run(key, node)
        if key.startswith("en16931-"):
            return [replace(f, release=_CEN_RELEASE) for f in found]
        return found

    def _run(self, data: bytes, requested: str | None, state: _State) -> None:
        if not data:
            raise DocumentRejected(Finding(rule="FORMAT", severity=FATAL, location="", message="empty document"))
        in_pdf = is_pdf(data)
        xmp_level = ""
        if in_pdf:
            state.format = FORMAT_FACTURX_PDF
            extraction = extract_pdf_xml(data, max_files=MAX_EMBEDDED_FILES, max_bytes=MAX_EMBEDDED_BYTES)
            state.attachments.add_pdf_files(extraction.attached)
            xml = extraction.xml
            xmp_level = extraction.xmp_level
        else:
            xml = data
        root = parse_xml(xml, what="embedded XML" if in_pdf else "document")
        fmt = classify_root(root)
        # Before any check that may reject: a rejected invoice's files are listed too.
        state.attachments.add_from_tree(root, fmt)
        if in_pdf and fmt != FORMAT_CII:
            raise DocumentRejected(
                Finding(
                    rule="FORMAT",
                    severity=FATAL,
                    location="",
                    message=f"PDF embeds a {fmt} document; Factur-X/ZUGFeRD embed CII",
                )
            )
        if not in_pdf:
            state.format = fmt
        state.summary, identifiers = extract_summary(root, fmt)
        plan = plan_checks(fmt, state.summary.profile, requested, in_pdf)
        state.profile = plan.profile

        state.findings.extend(self._schemas.validate(plan.xsd, root))
        text = serialise_for_xslt(root)
        # Saxon builds a tree of its own: lxml's (about ten times the size
        # of the document) goes first, so that the two never coexist. For a
        # 19 MB invoice this took the peak from 20 to 14 times the document.
        del root
        if len(text) > RELEASE_ABOVE_CHARS:
            release_freed_memory()
        french = [k for k in plan.schematrons if k in _FRENCH_KINDS]
        if french:
            state.choice = self.releases.choose(
                state.summary.issue_date, state.today, state.requested_release, state.summary.profile
            )
        try:
            node = self._schematrons.parse(text)
            del text
            fired: set[tuple[str, str]] = set()
            for key in plan.schematrons:
                # The Factur-X schematrons repeat the CEN rules, sometimes at
                # another context node: a rule the earlier (CEN) run already
                # reported is not reported again.
                new = [f for f in self._run_rules(key, node, state.choice) if (f.rule, f.severity) not in fired]
                fired.update((f.rule, f.severity) for f in new)
                state.findings.extend(new)
            shadow = self.shadow
            if french and state.choice is not None and shadow is not None and shadow != state.choice.release:
                state.shadow_release = shadow
                shadow_choice = Choice(shadow, "requested")
                for key in french:
                    state.shadow_findings.extend(self._run_rules(key, node, shadow_choice))
        except SchematronError as exc:
            logger.error("schematron run failed: %s", exc)
            state.findings.append(
                Finding(
                    rule="SCHEMATRON",
                    severity=FATAL,
                    location="",
                    message=f"business rules could not be evaluated: {exc}",
                )
            )
        state.findings.extend(check_identifiers(identifiers))
        if in_pdf and xmp_level:
            declared = _XMP_LEVELS.get(xmp_level.replace(" ", ""))
            if declared is not None and plan.profile in FACTURX_PROFILES and declared != plan.profile:
                state.findings.append(
                    Finding(
                        rule="FACTURX-XMP",
                        severity=WARNING,
                        location="",
                        message=(
                            f"PDF XMP metadata declares conformance level '{xmp_level}'"
                            f" but the XML (BT-24) is profile '{plan.profile}'"
                        ),
                    )
                )


@dataclass
class _State:
    today: dt.date
    requested_release: str | None = None
    format: str = FORMAT_UNKNOWN
    profile: str = ""
    findings: list[Finding] = field(default_factory=list)
    summary: Summary = field(default_factory=Summary)
    attachments: AttachmentCollector = field(default_factory=AttachmentCollector)
    choice: Choice | None = None
    shadow_release: RuleRelease | None = None
    shadow_findings: list[Finding] = field(default_factory=list)


def _fatal_rules(findings: list[Finding], release: str) -> set[str]:
    return {f.rule for f in findings if f.severity == FATAL and f.release == release}


def _shadow_outcome(state: _State, findings: list[Finding], valid: bool) -> ShadowOutcome | None:
    """The shadow release's verdict: the same findings, but its own French
    ones in place of the active release's."""
    shadow, choice = state.shadow_release, state.choice
    if shadow is None or choice is None:
        return None
    active_rules = _fatal_rules(findings, choice.release.label)
    shadow_rules = _fatal_rules(state.shadow_findings, shadow.label)
    others = any(f.severity == FATAL and f.release != choice.release.label for f in findings)
    return ShadowOutcome(
        release=shadow.version,
        valid=not others and not shadow_rules,
        only_active=sorted(active_rules - shadow_rules),
        only_shadow=sorted(shadow_rules - active_rules),
    )


_default_lock = threading.Lock()
_default: tuple[int, Validator] | None = None


def default_validator() -> Validator:
    """The process-wide Validator, created on first use (also after fork),
    with the shadow release VALIDATE_RULES_SHADOW names, if any."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            shadow = os.environ.get(ENV_RULES_SHADOW, "").strip() or None
            _default = (os.getpid(), Validator(shadow=shadow))
        return _default[1]


def validate_document(data: bytes, filename: str = "", profile: str | None = None) -> ValidationReport:
    """Validate with the lazily created process-wide Validator."""
    return default_validator().validate(data, filename=filename, profile=profile)
