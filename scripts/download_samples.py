"""`make run`'s last step: the buyer downloads each sample invoice made
available to it, with its attachments, and every file is compared with
what was sent.

As the account of .run/env (buyer of the samples' buyer), through the
public CLI only: `invoicectl inbox`, `invoicectl status`, `invoicectl
download`. The newest invoice whose document is the sample file is
taken, so a second `make run` (whose submissions are duplicates) checks
the first one's files again. Exit 1 if a file differs from the sample it came from,
or if a sample never reached the inbox.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from invoicectl.bench.generator import TEMPLATE_SELLER_SIREN

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
OUT = ROOT / ".run" / "downloads"
INVOICECTL = str(Path(sys.executable).parent / "invoicectl")


def cli(*args: str) -> Any:
    done = subprocess.run([INVOICECTL, *args, "--json"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"invoicectl {' '.join(args)}: {done.stderr.strip()}")
    return json.loads(done.stdout)


def sample_for(filename: str) -> Path | None:
    """The sample file a downloaded file was sent from, if any (embedded
    attachments have none of their own: their hash is what is checked)."""
    for folder in (SAMPLES, SAMPLES / "attachments"):
        if (folder / filename).is_file():
            return folder / filename
    return None


def sent(name: str, items: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The newest inbox item that is this very sample (its document's hash
    is the file's): other files may carry the same name (make
    deploy-local's run-unique copies, a user's edits)."""
    digest = hashlib.sha256((SAMPLES / name).read_bytes()).hexdigest()
    for item in items:
        if item["filename"] == name:
            invoice = cli("status", item["invoice_id"])
            if invoice["document"]["sha256"] == digest:
                return item, invoice
    return None


def main(expected: list[str]) -> int:
    # The samples' seller's invoices in the inbox, all of them (newest
    # first): the samples are far behind the default page of 50 after a
    # bench, whose invoices come from other sellers and are left out.
    items = cli("inbox", "--seller", TEMPLATE_SELLER_SIREN, "--limit", "0")
    failed = False
    for name in expected:
        found = sent(name, items)
        if found is None:
            print(f"{name}: not in the buyer's inbox", file=sys.stderr)
            failed = True
            continue
        item, invoice = found
        invoice_id = item["invoice_id"]
        folder = OUT / invoice_id
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{invoice_id}  {item['status_code']} {item['status']}  {name}")
        files = [("", invoice["document"]), *((a["sha256"], a) for a in invoice["attachments"])]
        for asked, ref in files:
            target = folder / ref["filename"]
            args = ["download", invoice_id, "--out", str(target), "--force"]
            got = cli(*args, *(["--attachment", asked] if asked else []))
            data = Path(got["path"]).read_bytes()
            sample = sample_for(ref["filename"])
            same = sample is not None and sample.read_bytes() == data
            if sample is not None and not same:
                failed = True
            if sample is None:
                check = "hash verified"
            else:
                check = f"identical to {sample.relative_to(ROOT)}" if same else "DIFFERS"
            kind = "document" if not asked else ref["origin"]
            digest = hashlib.sha256(data).hexdigest()[:16]
            print(f"    {kind:<10} {ref['filename']:<32} {len(data):>7} B  sha256 {digest}…  {check}")
    print(f"downloads in {OUT.relative_to(ROOT)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
