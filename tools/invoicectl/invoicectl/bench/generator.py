"""Bench documents from templates: a UBL / CII / Factur-X PDF mix.

Each document is a sample of ``samples/`` with a run-unique invoice number
(BT-1) and a seller drawn from a pool of fictitious companies (name BT-27,
SIREN BT-30 / BT-34 and VAT id BT-31, all with valid check digits). The
buyer (BT-44..BT-49) is left as in the samples, so the seed directory
(``samples/directory.csv``) routes every valid document.

Invalid documents come from ``ubl-invoice-invalid-rules.xml`` (EN 16931
business rules broken on purpose): the pipeline must end them at 213.
"""

from __future__ import annotations

import copy
import io
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import facturx  # type: ignore[import-untyped]
from lxml import etree
from pypdf import PdfWriter
from stdnum import luhn
from stdnum.fr import siren as fr_siren

SAMPLES = Path(__file__).resolve().parents[4] / "samples"

UBL_CBC = "urn:oasis:names:specification:ubl:schema:xsd:CommonBasicComponents-2"
CII_RSM = "urn:un:unece:uncefact:data:standard:CrossIndustryInvoice:100"
CII_RAM = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"

# The sellers of the samples; every occurrence is replaced by the drawn seller.
TEMPLATE_SELLER_NAME = "Atelier Lumière SAS"
TEMPLATE_SELLER_SIREN = "842109373"
TEMPLATE_SELLER_VAT = "FR88842109373"

_SELLER_WORDS = (
    ("Atelier", "Bureau", "Comptoir", "Fonderie", "Maison", "Menuiserie", "Imprimerie", "Laboratoire"),
    ("Lumière", "Rhône", "Vercors", "Garonne", "Océan", "Alpin", "Provence", "Loire"),
    ("SAS", "SARL", "SA", "EURL"),
)


class Kind(StrEnum):
    UBL = "ubl"
    CII = "cii"
    FACTURX = "facturx"


TEMPLATES: dict[Kind, str] = {
    Kind.UBL: "ubl-invoice-valid.xml",
    Kind.CII: "cii-invoice-valid.xml",
    Kind.FACTURX: "cii-invoice-valid.xml",
}
INVALID_TEMPLATE = "ubl-invoice-invalid-rules.xml"


@dataclass(frozen=True)
class Seller:
    name: str
    siren: str

    @property
    def vat_id(self) -> str:
        return "FR" + str(fr_siren.to_tva(self.siren))


@dataclass(frozen=True)
class BenchDocument:
    index: int
    kind: Kind
    filename: str
    invoice_number: str
    seller: Seller
    expect_valid: bool
    # What is submitted: XML, or the PDF for Factur-X.
    data: bytes
    # The XML itself (the embedded one for a PDF): the validation baseline's input.
    xml: bytes

    @property
    def in_pdf(self) -> bool:
        return self.kind is Kind.FACTURX


def seller_pool(size: int, rng: random.Random) -> list[Seller]:
    """``size`` distinct fictitious sellers with Luhn-valid SIRENs."""
    sellers: dict[str, Seller] = {}
    while len(sellers) < size:
        body = f"{rng.randrange(10_000_000, 100_000_000):08d}"
        siren = body + luhn.calc_check_digit(body)
        if siren in sellers or siren == TEMPLATE_SELLER_SIREN:
            continue
        name = " ".join(rng.choice(words) for words in _SELLER_WORDS)
        sellers[siren] = Seller(f"{name} {len(sellers) + 1}", siren)
    return list(sellers.values())


def blank_pdf() -> bytes:
    """A one-page A4 PDF to carry the Factur-X XML."""
    writer = PdfWriter()
    writer.add_blank_page(width=595, height=842)
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _number_path(root: etree._Element) -> str:
    if root.tag == f"{{{CII_RSM}}}CrossIndustryInvoice":
        return f"{{{CII_RSM}}}ExchangedDocument/{{{CII_RAM}}}ID"
    return f"{{{UBL_CBC}}}ID"


def rewrite(template: etree._Element, invoice_number: str, seller: Seller) -> bytes:
    """A copy of ``template`` with BT-1 and every seller value replaced."""
    root = copy.deepcopy(template)
    number = root.find(_number_path(root))
    if number is None:
        raise ValueError("template has no invoice number element (BT-1)")
    number.text = invoice_number
    replacements = {
        TEMPLATE_SELLER_NAME: seller.name,
        TEMPLATE_SELLER_SIREN: seller.siren,
        TEMPLATE_SELLER_VAT: seller.vat_id,
    }
    for element in root.iter(etree.Element):
        text = element.text.strip() if element.text else ""
        if text in replacements:
            element.text = replacements[text]
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def plan_kinds(count: int, invalid_share: float, rng: random.Random) -> list[tuple[Kind, bool]]:
    """(kind, expected valid) per document: formats in turn, exactly
    ``round(count * invalid_share)`` invalid ones at random positions."""
    if not 0.0 <= invalid_share <= 1.0:
        raise ValueError(f"invalid share must be between 0 and 1, not {invalid_share}")
    kinds = list(Kind)
    invalid = set(rng.sample(range(count), round(count * invalid_share)))
    return [(Kind.UBL, False) if i in invalid else (kinds[i % len(kinds)], True) for i in range(count)]


class Generator:
    """Builds the documents of one run; ``run_id`` makes invoice numbers unique."""

    def __init__(self, run_id: str, *, sellers: int = 50, seed: int = 1, samples: Path = SAMPLES) -> None:
        self.run_id = run_id
        self._rng = random.Random(seed)  # noqa: S311 - a reproducible mix, not a secret
        self._sellers = seller_pool(sellers, self._rng)
        parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_comments=True)
        names = {*TEMPLATES.values(), INVALID_TEMPLATE}
        self._templates = {name: etree.fromstring((samples / name).read_bytes(), parser) for name in names}
        self._pdf = blank_pdf()

    @property
    def sellers(self) -> list[Seller]:
        return list(self._sellers)

    def document(self, index: int, kind: Kind, expect_valid: bool) -> BenchDocument:
        seller = self._sellers[index % len(self._sellers)]
        number = f"BENCH-{self.run_id}-{index:07d}"
        template = self._templates[TEMPLATES[kind] if expect_valid else INVALID_TEMPLATE]
        xml = rewrite(template, number, seller)
        if kind is Kind.FACTURX:
            data: bytes = facturx.generate_from_binary(
                self._pdf, xml, flavor="factur-x", level="en16931", check_xsd=False
            )
            filename = f"{number}.pdf"
        else:
            data, filename = xml, f"{number}.xml"
        return BenchDocument(index, kind, filename, number, seller, expect_valid, data, xml)

    def documents(self, count: int, invalid_share: float) -> Iterator[BenchDocument]:
        for index, (kind, valid) in enumerate(plan_kinds(count, invalid_share, self._rng)):
            yield self.document(index, kind, valid)


def mix(documents: Sequence[BenchDocument]) -> dict[str, int]:
    """How many documents of each kind, and how many are invalid."""
    counts: dict[str, int] = {k.value: 0 for k in Kind}
    for d in documents:
        counts[d.kind.value] += 1
    counts["invalid"] = sum(not d.expect_valid for d in documents)
    return counts
