"""results.json as types: `Results` holds a run's provenance, its `Row`s and its `Failure`s.

The file is public (see docs/architecture.md, "results.json"), so its shape is written down here once, and the
schema number with it. A row from any earlier schema-1 run loads; a key this edgecomp does not know, a missing
required field or a text where a number belongs is one clear `EdgecompError` line. Writing keeps exactly the
keys that were set, in the order the pipeline writes them (an explicit `null` stays), so a results.json loaded
and written back is byte-identical.

This module imports nothing from `compress`: the pipeline, the report and the CLI all read it.

>>> results = Results.load(Path("runs/quickstart/results.json"))
>>> [(row.candidate, row.target, row.precision, row.size_kb) for row in results.rows][:1]
[('dense', 'pytorch', 'fp32', None)]
>>> results.write(Path("elsewhere/results.json"))
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, Strict, ValidationError, field_validator

from targets.base import EdgecompError
from targets.fileio import write_json

RESULTS_SCHEMA = 1
QAT_PRECISION = "int8-qat"  # the rows of an int8 export of a quantization-aware-trained model
KB = 1000  # bytes: the report's and the CLI's "KB" (`Row.size_kb`)


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


# An int stays an int and a float a float (so a file round-trips); a bool or a numeric string is refused.
Number = Annotated[int | float, PlainValidator(_number)]
Count = Annotated[int, Strict()]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Parity(_Strict):
    """The exported file against PyTorch eager on the val split (`Task.parity`)."""

    max_abs_diff: Number | None = None
    mean_abs_diff: Number | None = None
    top1_agreement: Number | None = None


class Sensitivity(_Strict):
    """int8_ac's search (TFLite, ONNX): the float, all-int8 and chosen metric, and each layer group's metric
    with that group alone in float, best first; and (runs since the search ranked by it) each group's outputs'
    SQNR against the float model's, the ranking's order."""

    reference: Number
    int8: Number
    final: Number
    ranking: list[tuple[str, Number]]
    sqnr_db: list[tuple[str, Number]] | None = None
    samples: Count | None = None  # validation samples the metric is over (runs since it was recorded)


class Row(_Strict):
    """One candidate x target x precision x thread count, measured in the target's own runtime."""

    candidate: str
    kind: str  # dense, finetune, kd, scratch_e, scratch_b
    lineage: list[str] | None = None
    target: str  # pytorch or a TARGETS name
    precision: str  # fp32, fp16, int8, int8_ac, int8_dynamic, int8-qat
    accuracy: Number  # the task's headline metric on the test split, in [0, 1]
    scores: dict[str, Number] | None = None  # every metric the task computes
    latency_ms_p50: Number | None = None
    latency_ms_p90: Number | None = None
    threads: Count | None = None
    macs: Count | None = None
    params: Count | None = None
    arch: str | None = None  # a hash of the layer shapes: equal iff the architectures are
    size_bytes: Count | None = None
    epochs: Count | None = None
    parity: Parity | None = None
    runtime: str | None = None
    # A row timed on another machine (bench.remote): host, cpu, cores, machine, runtimes and the runtime that
    # timed it; absent where the row was timed on the machine of results.json's `device`.
    device: dict[str, Any] | None = None
    postprocess_ms_p50: Number | None = None  # a detector's numpy post-processing, apart from the model
    postprocess_ms_p90: Number | None = None
    pruned_accuracy: Number | None = None  # a fine-tuned candidate's pruned model before the fine-tune
    max_accuracy_drop: Number | None = None  # int8_ac: the drop allowed, points
    keep_float: list[str] | None = None  # module-name globs an int8 file keeps in float
    activations: str | None = None  # an int8 file's activation range estimator, where the recipe chose one
    sensitivity: Sensitivity | None = None
    qat: dict[str, Any] | None = None  # int8-qat: epochs, final_loss, val_<metric>, lr, seconds
    samples: Count | None = None  # test images the accuracy is over
    correct: str | None = None  # which of them the model got right (top-1): `pack_correct`, for paired tests
    # [low, high]: a 95% interval of `accuracy` where no per-image right/wrong gives one (mAP@.5: a bootstrap
    # over the test images, `compress.tasks.coco_map.coco_map_with_interval`)
    accuracy_interval: tuple[Number, Number] | None = None
    run: str | None = None  # which run, in a report over several
    seed: Count | None = None  # the training seed of a recipe with several (`train.seeds`); absent with one

    def correct_mask(self) -> np.ndarray | None:
        """Per test image, whether the model got it right; None where the row does not say (detection, runs
        before per-image results were kept)."""
        if self.correct is None or self.samples is None:
            return None
        return unpack_correct(self.correct, self.samples)

    @property
    def size_kb(self) -> float | None:
        # Times 1/KB, not divided by KB: the committed reports' html sorts by these exact floats.
        return None if self.size_bytes is None else self.size_bytes * (1 / KB)


def pack_correct(correct: np.ndarray) -> str:
    """Per-image right/wrong as text for results.json: one bit per image, base64 (10,000 images: 1,668 chars)."""
    return base64.b64encode(np.packbits(np.asarray(correct, bool)).tobytes()).decode("ascii")


def unpack_correct(text: str, samples: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=samples).astype(bool)


class Failure(_Strict):
    """An export or measurement that failed; the run measured the rest."""

    candidate: str
    target: str
    precision: str
    reason: str
    run: str | None = None
    seed: Count | None = None


class Device(_Strict):
    cpu: str | None = None
    cores: Count | None = None
    machine: str | None = None
    arch: str | None = None  # what early runs called `machine`
    runtimes: dict[str, str] | None = None


def timing_device(rows: list[Row]) -> tuple[str, Device] | None:
    """Where a run's files were timed when that was not where it ran (`bench.remote`): the host and what it is,
    from a row's `device`; None for a run timed where it ran."""
    described = next((row.device for row in rows if row.device), None)
    if described is None:
        return None
    device = Device.model_validate({key: described[key] for key in Device.model_fields if key in described})
    return str(described.get("host", "another machine")), device


class RunInfo(_Strict):
    """Where a run's numbers come from: enough to reproduce it."""

    schema_version: int = Field(RESULTS_SCHEMA, alias="schema")
    recipe: str | None = None
    task: str | None = None
    metric: str | None = None  # the task's headline metric, e.g. top1 or map50
    created: str | None = None
    command: str | None = None
    seed: int | None = None
    seeds: list[int] | None = None  # a recipe of several seeds (its rows carry theirs); `seed` is then absent
    versions: dict[str, str] | None = None
    git_commit: str | None = None
    device: Device | None = None
    classes: int | None = None  # of a classifier: what chance is (1 / classes)

    @field_validator("schema_version", mode="before")
    @classmethod
    def _known_schema(cls, value: Any) -> Any:
        if value != RESULTS_SCHEMA or isinstance(value, bool):
            raise ValueError(
                f"results schema {value!r} is not {RESULTS_SCHEMA}, the one this edgecomp reads; "
                "regenerate results.json with `edgecomp run` from this version"
            )
        return value


class Run(RunInfo):
    """One run of a report over several (`compress.report.combine_runs`)."""

    label: str


class Results(RunInfo):
    """A run's results.json, or several runs combined (then `runs` holds each one's provenance)."""

    rows: list[Row] = []
    failed: list[Failure] = []
    runs: list[Run] | None = None

    @classmethod
    def parse(cls, data: Results | Any) -> Results:
        """`data` (a results dict, e.g. json.load of a results.json) checked; every problem is one line."""
        if isinstance(data, Results):
            return data
        if not isinstance(data, dict):
            raise EdgecompError(f"expected a JSON object with schema and rows, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise EdgecompError(_one_line(error, data)) from None

    @classmethod
    def load(cls, path: Path) -> Results:
        """A results.json file, checked; an unreadable file or a wrong schema is one `EdgecompError` line."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise EdgecompError(f"{path}: not found") from None
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
            raise EdgecompError(f"{path}: not valid results JSON ({error})") from None
        try:
            return cls.parse(data)
        except EdgecompError as error:
            raise EdgecompError(f"{path}: {error}") from None

    def dump(self) -> dict[str, Any]:
        """The JSON object: the keys that were set, in the file's order, `schema` by its name."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)

    def write(self, path: Path) -> Path:
        """Write results.json atomically, as the pipeline does."""
        return write_json(path, self.dump())


def _one_line(error: ValidationError, data: dict[str, Any]) -> str:
    """The first problem pydantic found, said as the report always said it, plus how many more there are."""
    problems = error.errors()
    first = next((p for p in problems if p["loc"][:1] == ("schema",)), problems[0])
    more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
    return _problem(first, data) + more


def _problem(problem: dict[str, Any], data: dict[str, Any]) -> str:
    loc, kind = problem["loc"], problem["type"]
    if loc == ("schema",):
        return str(problem["ctx"]["error"]) if "ctx" in problem else problem["msg"]
    if len(loc) >= 3 and loc[0] == "rows" and isinstance(loc[1], int) and isinstance(data.get("rows"), list):
        row = data["rows"][loc[1]]
        name = f"results row {loc[1]} ({row.get('candidate', '?')!r})" if isinstance(row, dict) else f"row {loc[1]}"
        field = ".".join(str(part) for part in loc[2:])
        if loc[2] == "accuracy_interval":
            return f"{name}: accuracy_interval must be [low, high], two numbers"
        if kind == "missing" or problem.get("input", 0) is None:
            return f"{name} has no {field}"
        if kind == "extra_forbidden":
            return f"{name}: unknown key {field!r} (a newer edgecomp's results? known: {', '.join(Row.model_fields)})"
        if kind in ("value_error", "int_type", "float_type") and field in _NUMERIC_ROW_FIELDS:
            return f"{name}: {field} must be numbers"
        return f"{name}: {field}: {problem['msg']}"
    if loc[:1] == ("rows",):
        return "results rows must be a list of objects (one per candidate x target x precision)"
    if loc[:1] == ("failed",):
        return f"results 'failed' ({'.'.join(map(str, loc[1:]))}): {problem['msg']} (one object per failed export)"
    return f"results {'.'.join(map(str, loc))}: {problem['msg']}"


_NUMERIC_ROW_FIELDS = (
    "accuracy",
    "latency_ms_p50",
    "latency_ms_p90",
    "threads",
    "macs",
    "params",
    "size_bytes",
    "epochs",
    "postprocess_ms_p50",
    "postprocess_ms_p90",
    "pruned_accuracy",
    "max_accuracy_drop",
)
