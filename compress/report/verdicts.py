"""Did inheriting the pruned weights beat training the pruned architecture from scratch? One answer per
architecture, from the run's own numbers.

Liu et al. (ICLR 2019) found that the same pruned architecture trained from random init often matches or
beats fine-tuning, so every report answers the question rather than assuming it.

With several seeds (`train.seeds`) each candidate is its rows over the seeds: ranked by their mean accuracy,
shown as mean ± sample sd (n seeds), and compared by Welch's t-test on the per-seed accuracies
(`compress.report.stats.compare_seeds`), so a margin within the seed-to-seed spread is a tie within noise.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from compress.report.fmt import pct, signed
from compress.report.stats import at_chance, compare_seeds, mean, sample_sd
from compress.report.table import KIND_LABELS, PRECISION_ORDER, PRUNED_KINDS, SCRATCH_KINDS, TARGET_ORDER, rank
from compress.results import Results, Row

# (target, precision) -> candidate -> seed (None without seeds) -> its most accurate row there
Settings = dict[tuple[str, str], dict[str, dict[int | None, Row]]]


def scratch_verdicts(results: Results | dict[str, Any]) -> list[str]:
    """One line per pruned architecture: did inheriting the pruned weights beat training it from scratch?

    Rows with the same `arch` (a hash of the pruned layer shapes) are one architecture; rows without one are
    grouped by MACs. An architecture may have several fine-tuned candidates (importance criteria, KD or not):
    the best one faces the best scratch kind. The comparison is on pytorch fp32 (the trained model before any
    export) when both sides have it, else on every target and precision where both do. A winner is named
    only when McNemar's test on the same test images says so (`compress.report.stats`); a candidate at chance
    gets no verdict.

    Where the fine-tuned candidates' rows carry `pruned_accuracy` (their pruned model before fine-tuning), a
    second line per architecture ranks them by it: that is where importance criteria differ most.
    """
    parsed = Results.parse(results)
    groups = _architectures([row for row in parsed.rows if row.kind in PRUNED_KINDS + SCRATCH_KINDS])
    names = _arch_names(groups)
    lines = []
    for (run, arch), rows in groups.items():
        prefix = f"{run}: " if run else ""
        classes = _classes(parsed, run)
        for (target, precision), best in _comparable_settings(rows):
            lines.append(f"{prefix}{names[(run, arch)]}, {target} {precision}: {_verdict(best, classes)}")
        before = _before_finetuning(rows)
        if before:
            lines.append(
                f"{prefix}{names[(run, arch)]}, pytorch fp32, right after pruning "
                f"(BN re-estimated, no fine-tune): {before}"
            )
    return lines


def _classes(results: Results, run: str | None) -> int | None:
    """The class count of `run` (one of several combined) or of the results."""
    if run is not None and results.runs:
        return next((info.classes for info in results.runs if info.label == run), None)
    return results.classes


def _before_finetuning(rows: list[Row]) -> str:
    """'pruned-kd-l2 61.2%, pruned-kd-random 12.0%', best first, from the pytorch rows' pruned_accuracy (with
    several seeds, their mean ± sd)."""
    pruned: dict[str, dict[int | None, float]] = defaultdict(dict)
    for row in rows:
        if row.target == "pytorch" and row.pruned_accuracy is not None:
            pruned[row.candidate][row.seed] = row.pruned_accuracy
    values = {name: list(seeds.values()) for name, seeds in pruned.items()}
    seeded = {name: None not in seeds for name, seeds in pruned.items()}
    ranked = sorted(values, key=lambda name: (-mean(values[name]), name))
    return ", ".join(f"{name} {_summary(values[name], seeded[name])}" for name in ranked)


def _summary(accuracies: list[float], seeded: bool) -> str:
    """'97.2%', or over seeds '97.2% ± 0.4 (n=3)' (the sample sd in points)."""
    if not seeded:
        return pct(mean(accuracies))
    sd = sample_sd(accuracies)
    return f"{pct(mean(accuracies))}{'' if sd is None else f' ± {100 * sd:.1f}'} (n={len(accuracies)})"


def _accuracy(rows: list[Row]) -> str:
    return _summary([row.accuracy for row in rows], rows[0].seed is not None)


def _architectures(rows: list[Row]) -> dict[tuple, list[Row]]:
    """(run, architecture) -> its rows. Rows with the same `arch` (a hash of the pruned layer shapes) are one
    architecture, rows without one are grouped by MACs. With several seeds, a candidate whose seeds pruned to
    different shapes (global pruning) keeps its seeds together: the groups it spans are one."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for row in rows:
        if (row.arch or row.macs) is not None:
            groups[(row.run, _arch(row))].append(row)
    merged: dict[tuple, list[Row]] = {}
    owner: dict[tuple, tuple] = {}  # (run, seeded candidate) -> the group it joined first
    for key, members in groups.items():
        seeded = [(row.run, row.candidate) for row in members if row.seed is not None]
        into = next((owner[name] for name in seeded if name in owner), key)
        merged.setdefault(into, []).extend(members)
        for name in seeded:
            owner.setdefault(name, into)
    return merged


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


def _comparable_settings(rows: list[Row]) -> list[tuple[tuple[str, str], dict[str, list[Row]]]]:
    """(target, precision) -> candidate -> its best row per seed, kept where a pruned and a scratch kind both ran."""
    settings: Settings = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        seeds = settings[(row.target, row.precision)][row.candidate]
        if row.seed not in seeds or row.accuracy > seeds[row.seed].accuracy:
            seeds[row.seed] = row
    both = {
        key: {name: list(seeds.values()) for name, seeds in entries.items()}
        for key, entries in settings.items()
        if {seeds[next(iter(seeds))].kind for seeds in entries.values()} & set(PRUNED_KINDS)
        and {seeds[next(iter(seeds))].kind for seeds in entries.values()} & set(SCRATCH_KINDS)
    }
    if ("pytorch", "fp32") in both:
        return [(("pytorch", "fp32"), both[("pytorch", "fp32")])]
    return sorted(both.items(), key=lambda item: (rank(TARGET_ORDER, item[0][0]), rank(PRECISION_ORDER, item[0][1])))


def _verdict(entries: dict[str, list[Row]], classes: int | None) -> str:
    """'pruned+KD 97.2% vs Scratch-E 95.1% (+2.1 pts) ...: <who won, and how sure>'; over seeds each accuracy is
    a mean, shown with its sd and n.

    Candidates are named by kind, and by name too where two fine-tuned candidates share a kind.
    """
    accuracy = {name: mean([row.accuracy for row in rows]) for name, rows in entries.items()}
    pruned = {name: rows for name, rows in entries.items() if rows[0].kind in PRUNED_KINDS}
    scratch: dict[str, str] = {}  # kind -> its best candidate
    for name, rows in entries.items():
        kind = rows[0].kind
        if kind in SCRATCH_KINDS and (kind not in scratch or accuracy[name] > accuracy[scratch[kind]]):
            scratch[kind] = name
    kinds = [rows[0].kind for rows in pruned.values()]
    label = {
        name: f"{name} ({KIND_LABELS[rows[0].kind]})" if kinds.count(rows[0].kind) > 1 else KIND_LABELS[rows[0].kind]
        for name, rows in pruned.items()
    }
    ranked = sorted(pruned, key=lambda name: (-accuracy[name], name))
    best = ranked[0]
    others = ", ".join(f"{label[name]} {_accuracy(pruned[name])}" for name in ranked[1:])
    versus = " and ".join(
        f"{KIND_LABELS[kind]} {_accuracy(entries[name])} ({signed(100 * (accuracy[best] - accuracy[name]))} pts)"
        for kind, name in sorted(scratch.items(), key=lambda item: SCRATCH_KINDS.index(item[0]))
    )
    also = f" (and {others})" if others else ""
    rivals = {kind: entries[name] for kind, name in scratch.items()}
    return f"{label[best]} {_accuracy(pruned[best])}{also} vs {versus}: {_outcome(pruned[best], rivals, classes)}"


def _outcome(best: list[Row], scratch: dict[str, list[Row]], classes: int | None) -> str:
    collapsed = [
        KIND_LABELS[rows[0].kind] for rows in (best, *scratch.values()) if any(at_chance(row, classes) for row in rows)
    ]
    if collapsed:
        return (
            f"no verdict: {', '.join(collapsed)} at chance ({pct(1 / classes)} for {classes} classes), a training "
            "that collapsed, not a result."
        )
    rival = max(scratch, key=lambda kind: mean([row.accuracy for row in scratch[kind]]))
    comparison = compare_seeds(best, scratch[rival])
    margin = round(comparison.margin_pts, 1)
    if comparison.tested and not comparison.significant:
        return f"a tie within noise with {KIND_LABELS[rival]} ({comparison.evidence()})."
    if not comparison.tested:
        leader = KIND_LABELS[best[0].kind] if margin > 0 else KIND_LABELS[rival]
        ahead = f"{leader} ahead by {abs(margin):.1f} pts" if margin else f"level with {KIND_LABELS[rival]}"
        return f"{ahead}, {comparison.evidence()}."
    if margin > 0:
        return f"fine-tuning the pruned weights won ({comparison.evidence()})."
    return (
        f"{KIND_LABELS[rival]} won by {-margin:.1f} pts ({comparison.evidence()}) — as Liu et al. (2019) found, "
        "the pruned architecture, not the inherited weights, carries the accuracy."
    )
