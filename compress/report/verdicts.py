"""Did inheriting the pruned weights beat training the pruned architecture from scratch? One answer per
architecture, from the run's own numbers.

Liu et al. (ICLR 2019) found that the same pruned architecture trained from random init often matches or
beats fine-tuning, so every report answers the question rather than assuming it.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from compress.report.fmt import pct, signed
from compress.report.table import KIND_LABELS, PRECISION_ORDER, PRUNED_KINDS, SCRATCH_KINDS, TARGET_ORDER, rank
from compress.results import Results, Row

# (target, precision) -> candidate -> (kind, best accuracy)
Settings = dict[tuple[str, str], dict[str, tuple[str, float]]]


def scratch_verdicts(results: Results | dict[str, Any]) -> list[str]:
    """One line per pruned architecture: did inheriting the pruned weights beat training it from scratch?

    Rows with the same `arch` (a hash of the pruned layer shapes) are one architecture; rows without one are
    grouped by MACs. An architecture may have several fine-tuned candidates (importance criteria, KD or not):
    the best one faces the best of each scratch kind. The comparison is on pytorch fp32 (the trained model
    before any export) when both sides have it, else on every target and precision where both do.

    Where the fine-tuned candidates' rows carry `pruned_accuracy` (their pruned model before fine-tuning), a
    second line per architecture ranks them by it: that is where importance criteria differ most.
    """
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in Results.parse(results).rows:
        if row.kind in PRUNED_KINDS + SCRATCH_KINDS and (row.arch or row.macs) is not None:
            groups[(row.run, _arch(row))].append(row)
    names = _arch_names(groups)
    lines = []
    for (run, arch), rows in groups.items():
        prefix = f"{run}: " if run else ""
        for (target, precision), best in _comparable_settings(rows):
            lines.append(f"{prefix}{names[(run, arch)]}, {target} {precision}: {_verdict(best)}")
        before = _before_finetuning(rows)
        if before:
            lines.append(
                f"{prefix}{names[(run, arch)]}, pytorch fp32, right after pruning "
                f"(BN re-estimated, no fine-tune): {before}"
            )
    return lines


def _before_finetuning(rows: list[Row]) -> str:
    """'pruned-kd-l2 61.2%, pruned-kd-random 12.0%', best first, from the pytorch rows' pruned_accuracy."""
    pruned = {
        row.candidate: row.pruned_accuracy
        for row in rows
        if row.target == "pytorch" and row.pruned_accuracy is not None
    }
    ranked = sorted(pruned, key=lambda name: (-pruned[name], name))
    return ", ".join(f"{name} {pct(pruned[name])}" for name in ranked)


def _arch(row: Row) -> tuple[str, Any]:
    return ("arch", row.arch) if row.arch else ("macs", row.macs)


def _arch_names(groups: dict[tuple, list[Row]]) -> dict[tuple, str]:
    """'0.88 M MACs', with the architecture hash added where two architectures of a run share that text."""
    names = {}
    for key, rows in groups.items():
        macs = next((row.macs for row in rows if row.macs is not None), None)
        names[key] = f"{macs / 1e6:.2f} M MACs" if macs is not None else f"arch {key[1][1]}"
    texts = [(key[0], name) for key, name in names.items()]
    for key, name in names.items():
        if texts.count((key[0], name)) > 1 and key[1][0] == "arch":
            names[key] = f"{name} (arch {str(key[1][1])[:8]})"
    return names


def _comparable_settings(rows: list[Row]) -> list[tuple[tuple[str, str], dict[str, tuple[str, float]]]]:
    """(target, precision) -> candidate -> (kind, best accuracy), kept where a pruned and a scratch kind both ran."""
    settings: Settings = defaultdict(dict)
    for row in rows:
        entries = settings[(row.target, row.precision)]
        previous = entries.get(row.candidate, (row.kind, row.accuracy))[1]
        entries[row.candidate] = (row.kind, max(previous, row.accuracy))
    both = {
        key: entries
        for key, entries in settings.items()
        if {kind for kind, _ in entries.values()} & set(PRUNED_KINDS)
        and {kind for kind, _ in entries.values()} & set(SCRATCH_KINDS)
    }
    if ("pytorch", "fp32") in both:
        return [(("pytorch", "fp32"), both[("pytorch", "fp32")])]
    return sorted(both.items(), key=lambda item: (rank(TARGET_ORDER, item[0][0]), rank(PRECISION_ORDER, item[0][1])))


def _verdict(entries: dict[str, tuple[str, float]]) -> str:
    """'pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) ...: <who won>', margins as displayed (0.1 pt).

    Candidates are named by kind, and by name too where two fine-tuned candidates share a kind.
    """
    pruned = {name: entry for name, entry in entries.items() if entry[0] in PRUNED_KINDS}
    scratch: dict[str, float] = {}
    for kind, accuracy in entries.values():
        if kind in SCRATCH_KINDS:
            scratch[kind] = max(scratch.get(kind, 0.0), accuracy)
    kinds = [kind for kind, _ in pruned.values()]
    label = {
        name: f"{name} ({KIND_LABELS[kind]})" if kinds.count(kind) > 1 else KIND_LABELS[kind]
        for name, (kind, _) in pruned.items()
    }
    ranked = sorted(pruned, key=lambda name: (-pruned[name][1], name))
    best, best_accuracy = ranked[0], pruned[ranked[0]][1]
    others = ", ".join(f"{label[name]} {pct(pruned[name][1])}" for name in ranked[1:])
    versus = " and ".join(
        f"{KIND_LABELS[k]} {pct(a)} ({signed(100 * (best_accuracy - a))} pts)"
        for k, a in sorted(scratch.items(), key=lambda item: SCRATCH_KINDS.index(item[0]))
    )
    also = f" (and {others})" if others else ""
    return f"{label[best]} {pct(best_accuracy)}{also} vs {versus}: {_outcome(best_accuracy, scratch)}"


def _outcome(best_accuracy: float, scratch: dict[str, float]) -> str:
    rival = max(scratch, key=scratch.__getitem__)
    margin = round(100 * (best_accuracy - scratch[rival]), 1)
    if margin > 0:
        return "fine-tuning the pruned weights won."
    if margin < 0:
        return (
            f"{KIND_LABELS[rival]} won by {-margin:.1f} pts — as Liu et al. (2019) found, "
            "the pruned architecture, not the inherited weights, carries the accuracy."
        )
    return f"a tie with {KIND_LABELS[rival]}: the inherited weights bought no accuracy, as Liu et al. (2019) found."
