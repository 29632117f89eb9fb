"""results.csv: one line per results row, in table order, with the computed Δ, speedup and front; safe to open
in a spreadsheet (no cell runs as a formula). With several seeds every seed's row has its line, and the columns
its table row computed over the seeds: accuracy_mean, accuracy_sd (sample, over accuracy_seeds seeds); Δ,
speedup and front are the table row's (of the means)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from compress.report.stats import interval
from compress.results import Row

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PARITY = ("max_abs_diff", "mean_abs_diff", "top1_agreement")


def csv_table(groups: list[tuple[list[Row], dict[str, Any]]]) -> str:
    """The results rows as they were set (plus parity spread into columns) and their table row's computed columns."""
    records = [
        _flat(row)
        | _over_seeds(computed)
        | {key: _round(computed[key]) for key in ("delta_pts", "speedup")}
        | {"front": computed["front"]}
        for rows, computed in groups
        for row in rows
    ]
    fields = list(dict.fromkeys(key for record in records for key in record))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows({key: _cell(record.get(key)) for key in fields} for record in records)
    return buffer.getvalue()


def _flat(row: Row) -> dict[str, Any]:
    """A results row's fields, its parity spread into parity_<key> columns, its per-image results (a bit
    string for paired tests) or its bootstrap interval (mAP) as the accuracy's 95% interval columns."""
    fields = row.model_dump(mode="json", exclude_unset=True)
    per_image, carried = fields.pop("correct", None), fields.pop("accuracy_interval", None)
    if per_image is not None or carried is not None:
        low, high = interval(row)
        fields |= {"accuracy_low95": round(low, 6), "accuracy_high95": round(high, 6)}
    parity = fields.pop("parity", None) or {}
    return fields | {f"parity_{key}": None for key in _PARITY} | {f"parity_{k}": v for k, v in parity.items()}


def _over_seeds(computed: dict[str, Any]) -> dict[str, Any]:
    """A table row over seeds: its mean accuracy, the sample sd and how many seeds; nothing for a one-seed row."""
    if computed["spread"] is None:
        return {}
    sd, count = computed["spread"]
    mean = round(computed["accuracy"], 6)
    return {"accuracy_mean": mean, "accuracy_sd": None if sd is None else round(sd / 100, 6), "accuracy_seeds": count}


def _cell(value: Any) -> Any:
    """Flat, spreadsheet-safe cell: lists joined, dicts as json, text that a spreadsheet would run as a
    formula prefixed with a quote (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, list):
        value = " > ".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _round(value: float | None) -> float | None:
    """Computed columns to 4 decimals: more would only show float noise (-0.5599999999999938)."""
    return None if value is None else round(value, 4)
