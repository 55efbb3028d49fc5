"""The engine from worker processes and threads, as the validate service uses it."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from invoicing_validate.validation import Validator, validate_document

ReadSample = Callable[[str], bytes]

EXPECTED = {"BR-CO-10", "BR-CO-13", "BR-CO-15", "SIREN"}


# Not "fork": forking a process whose SaxonC runtime is initialised can crash
# the child (a segfault was seen in CI), which is why the validate service
# starts its workers with "spawn". forkserver forks from a clean server.
@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_process_pool_workers_build_their_own_validator(
    validator: Validator, read_sample: ReadSample, start_method: str
) -> None:
    # The session validator exists in this (parent) process already: workers
    # must build their own rather than inherit its SaxonC state.
    docs = [read_sample("ubl-invoice-invalid-rules.xml"), read_sample("cii-invoice-valid.xml")] * 3
    context = multiprocessing.get_context(start_method)
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
        reports = list(pool.map(validate_document, docs))
    assert [r.valid for r in reports] == [False, True] * 3
    assert reports[0].rules() == EXPECTED


def test_threads_share_one_validator(validator: Validator, read_sample: ReadSample) -> None:
    docs = [
        read_sample("ubl-invoice-invalid-rules.xml"),
        read_sample("ubl-creditnote-valid.xml"),
        read_sample("cii-invoice-valid.xml"),
        b"<not-an-invoice/>",
    ] * 5
    with ThreadPoolExecutor(max_workers=4) as pool:
        reports = list(pool.map(validator.validate, docs))
    assert [r.valid for r in reports] == [False, True, True, False] * 5
    assert all(r.rules() == EXPECTED for r in reports[::4])
