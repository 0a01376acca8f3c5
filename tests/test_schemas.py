"""The event models agree with the topic's spec page; every output column is described."""

from __future__ import annotations

import json
import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import orjson
import pyarrow as pa
import pytest
from pydantic import BaseModel, ValidationError

import schemas.output
from flows.core.parsing import Event, classify
from schemas.events import COUNTED_NAMES, EVENT_MODELS, KIND_OF_NAME, Envelope, Payload

SPEC_NAME = "000_e00deed08f4f532b.txt"
ROOT = Path(__file__).resolve().parents[1]
SPEC_CANDIDATES = [
    *([Path(os.environ["SESSION_HISTORY_SPEC"])] if "SESSION_HISTORY_SPEC" in os.environ else []),
    ROOT / "docs" / "spec" / SPEC_NAME,
    ROOT / "docs" / SPEC_NAME,
    Path(__file__).resolve().parents[2] / "shared" / "spec" / SPEC_NAME,
]

Spec = dict[str, dict[str, str]]  # message name -> field path -> spec type


def spec_text() -> str:
    for path in SPEC_CANDIDATES:
        if path.is_file():
            return path.read_text(encoding="utf-8")
    pytest.fail(
        "spec page not found; set SESSION_HISTORY_SPEC or place it at one of: "
        + ", ".join(str(p) for p in SPEC_CANDIDATES)
    )


def parse_spec(text: str) -> tuple[Spec, dict[str, dict[str, Any]]]:
    """The field tables under each ``Message <Name>`` heading, and each message's example."""
    tables: Spec = {}
    examples: dict[str, dict[str, Any]] = {}
    current: str | None = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        heading = re.fullmatch(r"Message (\w+)", line)
        if heading:
            current = heading.group(1)
            tables[current] = {}
        elif current and line.startswith("Examples of payload"):
            # the JSON example runs until its braces balance
            buf: list[str] = []
            depth = 0
            for j in range(i + 1, len(lines)):
                buf.append(lines[j])
                depth += lines[j].count("{") - lines[j].count("}")
                if depth == 0 and buf[0].strip() == "{":
                    i = j
                    break
            examples[current] = json.loads("\n".join(buf))
        elif current and line.count("|") >= 6:
            cells = [c.strip() for c in line.split("|")]
            name, type_ = cells[0], cells[1]
            if name == "Name" or set(name) <= {"-"}:
                pass  # header and separator rows
            elif name == "(root)" or "(allOf item)" in name or "(single item)" in name:
                pass  # structure rows, not fields
            else:
                tables[current][name] = type_
        i += 1
    return tables, examples


@pytest.fixture(scope="module")
def spec() -> tuple[Spec, dict[str, dict[str, Any]]]:
    return parse_spec(spec_text())


def test_spec_page_parsed(spec: tuple[Spec, dict[str, dict[str, Any]]]) -> None:
    tables, examples = spec
    assert set(tables) == set(COUNTED_NAMES)
    assert set(examples) == set(COUNTED_NAMES)
    for fields in tables.values():
        assert {"id", "name", "namespace", "timestamp", "payload", "payload.userIds"} <= set(fields)
        assert len(fields) >= 15


def python_types(annotation: Any) -> tuple[Any, ...]:
    """The annotation's types other than None."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(a for a in get_args(annotation) if a is not type(None))
    return (annotation,)


def matches(spec_type: str, annotation: Any) -> bool:
    found = python_types(annotation)
    if len(found) != 1:
        return False
    (py,) = found
    if spec_type == "string":
        # an event model narrows ``name`` to a string Literal
        literal_of_str = get_origin(py) is Literal and all(isinstance(a, str) for a in get_args(py))
        return py is str or literal_of_str
    if spec_type == "integer":
        return py is int
    if spec_type == "array<string>":
        return py == list[str]
    if spec_type == "object":
        return isinstance(py, type) and issubclass(py, BaseModel)
    raise AssertionError(f"spec type {spec_type!r} has no expected Python type in this test")


def model_for(field_path: str) -> tuple[type[BaseModel], str]:
    parent, _, leaf = field_path.rpartition(".")
    if not parent:
        return Envelope, leaf
    assert parent == "payload", f"unexpected nesting in the spec: {field_path}"
    return Payload, leaf


@pytest.mark.parametrize("message", COUNTED_NAMES)
def test_every_spec_field_exists_with_its_type(
    spec: tuple[Spec, dict[str, dict[str, Any]]], message: str
) -> None:
    tables, _ = spec
    problems = []
    for model in (Envelope, EVENT_MODELS[message]):
        for field_path, spec_type in tables[message].items():
            base, leaf = model_for(field_path)
            owner = model if base is Envelope else Payload
            info = owner.model_fields.get(leaf)
            if info is None:
                problems.append(f"{field_path}: missing on {owner.__name__}")
            elif not matches(spec_type, info.annotation):
                problems.append(
                    f"{field_path}: spec {spec_type}, {owner.__name__} {info.annotation}"
                )
    assert problems == []


def test_payload_object_is_the_payload_model() -> None:
    assert python_types(Envelope.model_fields["payload"].annotation) == (Payload,)


@pytest.mark.parametrize("message", COUNTED_NAMES)
def test_event_model_name_is_its_literal(message: str) -> None:
    model = EVENT_MODELS[message]
    assert model.__name__ == message
    assert issubclass(model, Envelope)
    annotation = model.model_fields["name"].annotation
    assert get_origin(annotation) is Literal
    assert get_args(annotation) == (message,)


@pytest.mark.parametrize("message", COUNTED_NAMES)
def test_event_model_rejects_another_name(message: str) -> None:
    other = next(n for n in COUNTED_NAMES if n != message)
    doc = {"id": "e", "name": other, "namespace": "n", "timestamp": "2024-01-01T00:00:00Z"}
    with pytest.raises(ValidationError):
        EVENT_MODELS[message].model_validate(doc)
    assert EVENT_MODELS[message].model_validate(doc | {"name": message}).name == message


def test_event_models_cover_exactly_the_counted_names() -> None:
    assert tuple(EVENT_MODELS) == COUNTED_NAMES
    assert set(KIND_OF_NAME) == set(COUNTED_NAMES)


@pytest.mark.parametrize("message", COUNTED_NAMES)
def test_spec_example_validates_and_is_counted(
    spec: tuple[Spec, dict[str, dict[str, Any]]], message: str
) -> None:
    _, examples = spec
    doc = examples[message] | {"name": message}
    model = EVENT_MODELS[message].model_validate(doc)
    assert model.payload is not None
    assert model.payload.userIds == ["string"]
    result = classify(orjson.dumps(doc))
    assert isinstance(result, Event)
    assert result.kind == KIND_OF_NAME[message]


# --- output schemas ----------------------------------------------------------------------------

OUTPUT_SCHEMAS = {
    name: value for name, value in vars(schemas.output).items() if isinstance(value, pa.Schema)
}


def test_output_schemas_found() -> None:
    assert {
        "RATES_PARTITION_SCHEMA",
        "RATES_FILE_SCHEMA",
        "RATES_SCHEMA",
        "LATE_EVENTS_SCHEMA",
        "DEAD_LETTERS_SCHEMA",
    } <= set(OUTPUT_SCHEMAS)


@pytest.mark.parametrize("schema_name", sorted(OUTPUT_SCHEMAS))
def test_every_output_field_has_a_description(schema_name: str) -> None:
    schema = OUTPUT_SCHEMAS[schema_name]
    assert len(schema) > 0
    missing = [
        f.name
        for f in schema
        if not (f.metadata or {}).get(b"description", b"").decode("utf-8").strip()
    ]
    assert missing == [], f"{schema_name}: fields without a description: {missing}"
