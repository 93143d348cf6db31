"""Run every benchmark module in several fresh processes; report medians, min–max and ratios.

Usage::

    .venv/bin/python -m benchmarks                 # all modules, 3 processes each, writes docs/benchmarks.md
    .venv/bin/python -m benchmarks --processes 5   # more processes
    .venv/bin/python -m benchmarks --only calc     # modules whose name contains "calc" (comma-separated list
                                                   # allowed); replaces only their sections of the doc
    .venv/bin/python -m benchmarks --quick         # short runs (smoke), does not write the doc

Ratios are taken between rows of the same process and then summarised (median of the
per-process ratios), so machine noise between processes does not enter a ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _modules(only: str | None) -> list[str]:
    mods = sorted(p.stem for p in HERE.glob("bench_*.py"))
    wanted = None if only is None else [w for w in only.split(",") if w]
    return [m for m in mods if wanted is None or any(w in m for w in wanted)]


def _run_module(mod: str, quick: bool) -> list[dict[str, object]]:
    cmd = [sys.executable, "-m", f"benchmarks.{mod}", "--json"] + (["--quick"] if quick else [])
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        raise SystemExit(f"benchmark {mod} failed")
    line = out.stdout.strip().splitlines()[-1]
    rows: list[dict[str, object]] = json.loads(line)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--only", default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args()
    sections: list[str] = []
    for mod in _modules(args.only):
        runs = []
        for i in range(args.processes):
            print(f"{mod}: process {i + 1}/{args.processes}", file=sys.stderr)
            runs.append(_run_module(mod, args.quick))
        sections.append(_section(mod, runs))
    header = (
        "# Benchmarks\n\n"
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}, "
        f"{args.processes} processes per module. Values are medians over processes of per-process medians; "
        "ratios are per-process ratios against the row named as baseline, then the median.\n\n"
        "Reproduce: `.venv/bin/python -m benchmarks` (this file is rewritten).\n"
    )
    text = header + "\n".join(sections)
    print(text)
    if not args.quick:
        out = Path(args.out)
        if args.only is not None and out.exists():
            text = merge_sections(out.read_text(encoding="utf-8"), sections)
        out.write_text(text, encoding="utf-8")


def merge_sections(existing: str, sections: list[str]) -> str:
    """``existing`` with each of ``sections`` replacing the ``## name`` section of the same name.

    A section runs from its ``## `` heading to the next ``## `` heading; sections not in the
    file are appended. So ``--only`` refreshes its modules and keeps every other module's
    results (and hand-written sections) as they were.
    """
    parts: list[list[str]] = [[]]
    for line in existing.splitlines(keepends=True):
        if line.startswith("## "):
            parts.append([])
        parts[-1].append(line)
    blocks = ["".join(p) for p in parts]
    for sec in sections:
        heading = sec.strip().splitlines()[0]
        body = sec.strip("\n") + "\n\n"
        for i, b in enumerate(blocks):
            if b.startswith(heading + "\n"):
                blocks[i] = body
                break
        else:
            blocks.append(body)
    return "".join(blocks)


def _section(mod: str, runs: list[list[dict[str, object]]]) -> str:
    lines = [
        f"\n## {mod}\n",
        "| group | name | median | min – max | unit | ratio to baseline |",
        "|---|---|---|---|---|---|",
    ]
    keys = [(str(r["group"]), str(r["name"])) for r in runs[0]]
    for group, name in keys:
        vals = [float(next(r["value"] for r in run if r["group"] == group and r["name"] == name)) for run in runs]  # type: ignore[arg-type]
        first = next(r for r in runs[0] if r["group"] == group and r["name"] == name)
        base = first.get("baseline")
        ratio_txt = ""
        if base:
            ratios = []
            for run in runs:
                v = float(next(r["value"] for r in run if r["group"] == group and r["name"] == name))  # type: ignore[arg-type]
                b = float(next(r["value"] for r in run if r["group"] == group and r["name"] == base))  # type: ignore[arg-type]
                ratios.append(v / b if b else float("nan"))
            ratio_txt = f"{statistics.median(ratios):.2f}× {base}"
        lines.append(
            f"| {group} | {name} | {statistics.median(vals):,.3f} | {min(vals):,.3f} – {max(vals):,.3f} | "
            f"{first['unit']} | {ratio_txt} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
