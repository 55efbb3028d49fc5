"""The XML names of a CDAR message (UN/CEFACT D22B), shared by build,
parse and validation."""

from __future__ import annotations

from typing import Final

RSM: Final = "urn:un:unece:uncefact:data:standard:CrossDomainAcknowledgementAndResponse:100"
RAM: Final = "urn:un:unece:uncefact:data:standard:ReusableAggregateBusinessInformationEntity:100"
UDT: Final = "urn:un:unece:uncefact:data:standard:UnqualifiedDataType:100"
QDT: Final = "urn:un:unece:uncefact:data:standard:QualifiedDataType:100"

NSMAP: Final = {"rsm": RSM, "ram": RAM, "udt": UDT, "qdt": QDT}
CDAR_NAMESPACES: Final = frozenset(NSMAP.values())

ROOT_NAME: Final = "CrossDomainAcknowledgementAndResponse"
ROOT_TAG: Final = f"{{{RSM}}}{ROOT_NAME}"

# UNTDID 2379 date/time formats: 102 CCYYMMDD, 204 CCYYMMDDHHMMSS.
DATE_FORMAT: Final = "102"
DATETIME_FORMAT: Final = "204"
