"""``perpmargin journal …``: verify, replay or snapshot a command journal (SQLite or PostgreSQL).

``DB`` is a SQLite file path, ``sqlite:///path`` or a PostgreSQL URL
(``postgresql://user@host:5432/db?schema=NAME``; see :func:`perpmargin.storage.open_store`).
Output shows the URL with any password redacted.

* ``verify DB``   read-only full check: the hash chain from genesis, every record replayed,
  every snapshot compared with the replay at its seq. Exit 0 when clean, 1 when the last
  record is torn (opening the journal, e.g. ``snapshot``, cuts it), 2 on an error.
* ``replay DB``   read-only rebuild from scratch (snapshots ignored), optionally cut at
  ``--until SEQ``; also rebuilds from the latest snapshot and says whether the two state
  hashes are identical (exit 1 if not).
* ``snapshot DB`` opens the journal for writing (which cuts a torn tail and says so),
  stores a snapshot at the current seq and prints it.

Every command takes ``--venue`` (preset name or file; default: the one in the journal's meta)
and ``--json`` (one JSON object on stdout instead of Rich tables). A
:class:`~perpmargin.errors.PerpmarginError` (corruption, wrong venue, no journal…) prints one
readable line on stderr (and an ``{"ok": false, "error": …}`` object with ``--json``) and
exits with code 2.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from perpmargin.errors import PerpmarginError
from perpmargin.journal import Journal, TornTail, replay_with_report, verify_journal
from perpmargin.storage import describe_url

__all__ = ["app"]

app = typer.Typer(
    name="journal",
    help="Verify, replay or snapshot a command journal.",
    no_args_is_help=True,
    add_completion=False,
)

PathArg = Annotated[
    str,
    typer.Argument(
        metavar="DB", help="The journal: a SQLite file, sqlite:///path or a postgresql:// URL.", show_default=False
    ),
]
VenueOpt = Annotated[
    str | None, typer.Option("--venue", help="Venue preset name or file (default: the one in the journal's meta).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")]


def _fail(err: PerpmarginError, as_json: bool) -> NoReturn:
    if as_json:
        details = {k: v if isinstance(v, bool | int | str | None) else str(v) for k, v in err.details.items()}
        typer.echo(json.dumps({"ok": False, "error": err.code, "message": err.message, "details": details}))
    Console(stderr=True).print(
        f"[bold red]error[/bold red] {escape(f'[{err.code}]')}: {escape(str(err))}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)


def _emit(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, sort_keys=True))


def _table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for k, v in rows:
        table.add_row(k, escape(v))
    return table


def _torn_line(torn: TornTail | None) -> str:
    if torn is None:
        return "none"
    return f"record {torn.seq} ({torn.reason}); valid prefix ends at {torn.kept_seq}"


@app.command()
def verify(path: PathArg, venue: VenueOpt = None, as_json: JsonOpt = False) -> None:
    """Check the chain, replay every record and cross-check every snapshot (read-only)."""
    try:
        report = verify_journal(path, venue)
    except PerpmarginError as e:
        _fail(e, as_json)
    if as_json:
        _emit({"path": describe_url(path), **report.to_dict()})
    else:
        console = Console()
        console.print(
            _table(
                f"Journal {describe_url(path)}",
                [
                    ("status", "ok" if report.ok else "torn last record (cut on next open)"),
                    ("venue", report.venue),
                    ("venue fingerprint", report.venue_fingerprint),
                    ("records", str(report.records)),
                    ("head hash", report.head_hash),
                    ("state hash", report.state_hash),
                    ("snapshots verified", ", ".join(map(str, report.snapshots)) or "none"),
                    ("torn tail", _torn_line(report.torn_tail)),
                ],
            )
        )
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def replay(
    path: PathArg,
    venue: VenueOpt = None,
    until: Annotated[int | None, typer.Option("--until", min=0, help="Stop after this seq.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Rebuild the state from scratch (and from the latest snapshot) and print the state hash (read-only)."""
    try:
        scratch = replay_with_report(path, venue, until_seq=until)
        snap = replay_with_report(path, venue, until_seq=until, from_snapshot=True)
    except PerpmarginError as e:
        _fail(e, as_json)
    st = scratch.engine.state
    scratch_hash = scratch.engine.state_hash()
    snap_hash = snap.engine.state_hash()
    identical = scratch_hash == snap_hash and scratch.head_seq == snap.head_seq
    users = sum(1 for a in st.accounts if not a.startswith("@"))
    if as_json:
        _emit(
            {
                "path": describe_url(path),
                "ok": identical,
                "seq": st.seq,
                "head_hash": scratch.head_hash,
                "last_ts_ms": st.last_ts_ms,
                "accounts": users,
                "state_hash": scratch_hash,
                "snapshot_seq": snap.snapshot_seq,
                "state_hash_from_snapshot": snap_hash,
                "identical": identical,
                "torn_tail": None if scratch.torn_tail is None else scratch.torn_tail.to_dict(),
            }
        )
    else:
        start = "none (from genesis)" if snap.snapshot_seq is None else f"seq {snap.snapshot_seq}"
        Console().print(
            _table(
                f"Replay of {describe_url(path)}",
                [
                    ("seq", str(st.seq)),
                    ("last ts_ms", str(st.last_ts_ms)),
                    ("accounts", str(users)),
                    ("state hash (from scratch)", scratch_hash),
                    ("latest snapshot used", start),
                    ("state hash (snapshot + tail)", snap_hash),
                    ("paths agree", "identical" if identical else "DIFFERENT"),
                    ("torn tail (left out)", _torn_line(scratch.torn_tail)),
                ],
            )
        )
    if not identical:
        raise typer.Exit(1)


@app.command()
def snapshot(path: PathArg, venue: VenueOpt = None, as_json: JsonOpt = False) -> None:
    """Open the journal (cutting a torn tail), store a snapshot at the current seq and print it."""
    try:
        journal = Journal.open(path, venue, create=False)
        try:
            snap = journal.snapshot()
            recovery = journal.recovery
        finally:
            journal.close()
    except PerpmarginError as e:
        _fail(e, as_json)
    if as_json:
        _emit(
            {
                "path": describe_url(path),
                "ok": True,
                "seq": snap.seq,
                "state_hash": snap.state_hash,
                "chain_hash": snap.chain_hash,
                "torn_tail_cut": None if recovery is None else recovery.to_dict(),
            }
        )
    else:
        Console().print(
            _table(
                f"Snapshot of {describe_url(path)}",
                [
                    ("seq", str(snap.seq)),
                    ("state hash", snap.state_hash),
                    ("chain hash", snap.chain_hash),
                    ("torn tail cut", _torn_line(recovery)),
                ],
            )
        )
