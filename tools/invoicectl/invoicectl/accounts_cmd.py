"""invoicectl accounts / token: API accounts and the current access token.

Exit codes: 0 success; 1 refused (by the identity provider) or not found;
2 usage or configuration error.
"""

from __future__ import annotations

import json
from typing import Annotated

import httpx
import typer
from rich.console import Console

from invoicectl.accounts import AccountError, AccountsAdmin
from invoicectl.config import client_config, token_source

accounts_app = typer.Typer(
    help="API accounts (OAuth2 clients) in the identity provider: needs the directory-admin role.",
    no_args_is_help=True,
    add_completion=False,
)
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _admin() -> AccountsAdmin:
    config = client_config()
    return AccountsAdmin(config.token_url, token_source(), config.ca_file)


def _fail(exc: Exception) -> typer.Exit:
    err.print(f"[red]error:[/red] {exc}", markup=True)
    usage = isinstance(exc, AccountError) and exc.field in {"role", "siren", "name", "client_id", "INVOICING_TOKEN_URL"}
    return typer.Exit(2 if usage else 1)


@accounts_app.command("create")
def create(
    roles: Annotated[
        list[str], typer.Option("--role", help="supplier, buyer, directory-admin or operator; repeatable.")
    ],
    sirens: Annotated[
        list[str] | None, typer.Option("--siren", help="A SIREN the account acts for; repeatable.")
    ] = None,
    name: Annotated[str, typer.Option(help="Client id (default: account-<random>).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
) -> None:
    """Create an API account; prints its client id and secret (shown once)."""
    try:
        account = _admin().create(roles, sirens or [], name)
    except (AccountError, httpx.HTTPError) as exc:
        raise _fail(exc) from exc
    if as_json:
        out.print(json.dumps(account.as_json()))
        return
    out.print(f"client_id      {account.client_id}")
    out.print(f"client_secret  {account.client_secret}")
    out.print(f"roles          {', '.join(account.roles)}")
    out.print(f"sirens         {', '.join(account.sirens) or '-'}")


@accounts_app.command("delete")
def delete(client_id: Annotated[str, typer.Argument(help="The account's client id.")]) -> None:
    """Delete an API account: its tokens stop working when they expire."""
    try:
        found = _admin().delete(client_id)
    except (AccountError, httpx.HTTPError) as exc:
        raise _fail(exc) from exc
    if not found:
        err.print(f"[red]error:[/red] no account {client_id}")
        raise typer.Exit(1)
    out.print(f"deleted {client_id}")


def token() -> None:
    """Print an access token for the current credentials (for grpcurl, curl)."""
    out.print(token_source().token())
