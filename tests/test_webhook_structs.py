"""The msgspec mirrors (wa_worker/models/webhook_structs.py) stay in step with the pydantic
models they stand in for on the hot path: the same fields under the same JSON names, the same
types, defaults and constraints, and a guard for each field the models also read by name."""

from __future__ import annotations

import types
import typing
from typing import Any

import annotated_types
import msgspec
import pytest
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from wa_worker.models import records, webhook
from wa_worker.models import webhook_structs as fast

MODELS = [
    m
    for m in vars(webhook).values()
    if isinstance(m, type) and issubclass(m, webhook.Tolerant) and m is not webhook.Tolerant
]


def canon(tp: Any) -> str:
    """A type as text, a model or struct by its name, unions in a stable order."""
    if isinstance(tp, type) and issubclass(tp, BaseModel | msgspec.Struct):
        return tp.__name__
    if typing.get_origin(tp) is typing.Annotated:
        return canon(typing.get_args(tp)[0])
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(sorted(canon(a) for a in typing.get_args(tp)))
    if args := typing.get_args(tp):
        return f"{typing.get_origin(tp).__name__}[{', '.join(canon(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", repr(tp))


def min_length(tp: Any) -> int | None:
    if typing.get_origin(tp) is typing.Annotated:
        for meta in typing.get_args(tp)[1:]:
            if isinstance(meta, msgspec.Meta):
                return meta.min_length
    return None


def model_view(model: type[BaseModel], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out = {}
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        out[info.alias or name] = _model_field(info)
    return out


def _model_field(info: FieldInfo) -> tuple[str, bool, Any, int | None]:
    lengths = [m.min_length for m in info.metadata if isinstance(m, annotated_types.MinLen)]
    default = info.default_factory() if info.default_factory else info.default  # type: ignore[call-arg]
    return (
        canon(info.annotation),
        info.is_required(),
        None if info.is_required() else default,
        lengths[0] if lengths else None,
    )


def struct_view(struct: type[msgspec.Struct]) -> dict[str, Any]:
    out = {}
    for f in msgspec.structs.fields(struct):
        if f.type is msgspec.UnsetType:
            continue  # a by-name guard (test below)
        default = f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        out[f.encode_name] = (
            canon(f.type),
            f.required,
            None if f.required else default,
            min_length(f.type),
        )
    return out


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_each_model_has_its_mirror(model: type[BaseModel]) -> None:
    struct = getattr(fast, model.__name__)
    assert struct_view(struct) == model_view(model)
    assert model.model_config.get("extra") == "allow"  # unknown fields: ignored by msgspec


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_fields_read_by_name_too_have_a_guard(model: type[BaseModel]) -> None:
    by_name = {n for n, i in model.model_fields.items() if i.alias and i.alias != n}
    guards = {
        f.encode_name
        for f in msgspec.structs.fields(getattr(fast, model.__name__))
        if f.type is msgspec.UnsetType
    }
    assert guards == (by_name if model.model_config.get("populate_by_name") else set())


def test_the_envelope_mirror_leaves_the_timestamp_to_pydantic() -> None:
    """...and checks an object body as the payload it must be (parse.py checks it so next)."""
    want = model_view(records.Envelope, skip=("timestamp",))
    assert want["body"][0] == "dict[str, Any] | str"
    want["body"] = ("WebhookPayload | str", *want["body"][1:])
    assert struct_view(fast.Envelope) == want
    assert "timestamp" in records.Envelope.model_fields


def test_every_mirror_stands_for_a_model() -> None:
    structs = {n for n, s in vars(fast).items() if isinstance(s, type) and issubclass(s, fast.S)}
    assert structs - {"S"} == {m.__name__ for m in MODELS} | {"Envelope"}
