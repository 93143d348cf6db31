"""The Quickstart's main job: the demo scenario liquidates the two over-levered accounts,
leaves nobody liquidatable, and its SQLite journal replays to the live state hash."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from perpmargin.demo import run_demo


def test_the_demo_liquidates_erin_and_carol_and_replays_to_the_same_hash(tmp_path: Path) -> None:
    console = Console(file=open(tmp_path / "out.txt", "w"), width=160)  # noqa: SIM115
    result = run_demo(db=tmp_path / "demo.sqlite", preset="binance-usdm", console=console)
    console.file.close()
    assert result.replayed_hash == result.state_hash
    assert result.liquidated == ("carol", "erin")
    assert result.still_liquidatable == ()
    text = (tmp_path / "out.txt").read_text()
    assert "identical" in text
    assert "Accounts at the last step" in text
