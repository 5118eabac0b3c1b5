"""The one cattrs converter through which JSON and TOML data become attrs objects.

cattrs is lenient by default (``str(5)`` is a valid ``str``, ``"1.5"`` a valid
``float``); a protocol that promises "wrong types are rejected" cannot be, so
the primitive hooks here accept only the JSON type they name.  Errors come out
as :class:`InputError` whose message names the offending field.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.cols import (
    homogenous_tuple_structure_factory,
    is_mapping,
    is_sequence,
    list_structure_factory,
    mapping_structure_factory,
)
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

T = TypeVar("T")

__all__ = [
    "FieldError",
    "InputError",
    "check",
    "converter",
    "loads_json",
    "register_renames",
    "secret_digest",
    "secret_field",
    "sha256_field",
    "structure",
    "wire_name",
]


class InputError(ValueError):
    """Input that does not fit its schema; ``str()`` names the field(s) at fault."""


class FieldError(ValueError):
    """Raised by attrs validators so the report can name the field that failed."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(problem)
        self.field = field


def check(predicate: Callable[[Any], bool], problem: str) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: ``problem`` is reported against the field when ``predicate`` fails."""

    def validator(_instance: Any, attribute: Any, value: Any) -> None:
        if not predicate(value):
            raise FieldError(attribute.name, problem)

    return validator


_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")


def secret_field() -> Any:
    """An optional secret (an API key, a token): non-empty when given, never in a repr."""
    return attrs.field(
        default=None,
        validator=check(lambda v: v is None or len(v) >= 1, "must not be empty"),
        repr=False,
    )


def sha256_field(*validators: Callable[[Any, Any, Any], None]) -> Any:
    """An optional SHA-256 in hex, given instead of a secret; never in a repr."""
    return attrs.field(
        default=None,
        validator=[
            check(lambda v: v is None or bool(_HEX64.match(v)), "must be 64 hex digits"),
            *validators,
        ],
        repr=False,
    )


def secret_digest(secret: str | None, sha256_hex: str | None) -> bytes | None:
    """The SHA-256 a secret is compared by, from the secret or its hex digest."""
    if sha256_hex is not None:
        return bytes.fromhex(sha256_hex)
    if secret is not None:
        return hashlib.sha256(secret.encode()).digest()
    return None


# attrs field name -> wire name, per class, so errors speak the wire's language.
_WIRE_NAMES: dict[type, dict[str, str]] = {}


def _strict_str(value: object, _type: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {_json_type(value)}")
    return value


def _strict_int(value: object, _type: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {_json_type(value)}")
    return value


def _strict_float(value: object, _type: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected a number, got {_json_type(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError("expected a finite number")
    return result


def _strict_bool(value: object, _type: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_json_type(value)}")
    return value


def _strict_int_or_str(value: object, _type: object) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer or a string, got {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    names: dict[type, str] = {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _is_list_like(type_: Any) -> bool:
    return is_sequence(type_) and type_ not in (str, bytes)


def _strict_mapping_factory(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    inner = mapping_structure_factory(type_, conv)

    def hook(value: object, cls: Any) -> Any:
        if not isinstance(value, Mapping):
            raise TypeError(f"expected an object, got {_json_type(value)}")
        return inner(value, cls)

    return hook


def _strict_sequence_factory(type_: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    origin = getattr(type_, "__origin__", type_)
    if origin is tuple:
        inner = homogenous_tuple_structure_factory(type_, conv)
    else:
        inner = list_structure_factory(type_, conv)

    def hook(value: object, cls: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected an array, got {_json_type(value)}")
        return inner(value, cls)

    return hook


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(detailed_validation=True, forbid_extra_keys=False)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook_func(lambda t: t == int | str, _strict_int_or_str)
    conv.register_structure_hook_factory(is_mapping, _strict_mapping_factory)
    conv.register_structure_hook_factory(_is_list_like, _strict_sequence_factory)
    return conv


converter = _make_converter()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return "required field missing"
    if isinstance(exc, ForbiddenExtraKeysError):
        return "unknown field(s): " + ", ".join(sorted(exc.extra_fields))
    text = str(exc).strip()
    if text:
        return text
    return "invalid value"


def _flatten(exc: BaseException, path: str, out: list[str]) -> None:
    """Walk cattrs' exception groups into ``field: problem`` lines."""
    if isinstance(exc, ClassValidationError | IterableValidationError):
        wire = _WIRE_NAMES.get(getattr(exc, "cl", object), {})
        excs_with_notes, other = exc.group_exceptions()
        for inner, note in excs_with_notes:
            name = getattr(note, "name", None)
            name = wire.get(name, name) if name is not None else None
            index = getattr(note, "index", None)
            if name is not None:
                inner_path = f"{path}.{name}" if path else str(name)
            elif index is not None:
                inner_path = f"{path}[{index!r}]"
            else:
                inner_path = path
            _flatten(inner, inner_path, out)
        for inner in other:
            if isinstance(inner, FieldError):
                field = wire.get(inner.field, inner.field)
                out.append(f"{path + '.' if path else ''}{field}: {inner}")
            else:
                _flatten(inner, path, out)
        return
    if isinstance(exc, BaseExceptionGroup):
        for member in exc.exceptions:
            _flatten(member, path, out)
        return
    out.append(f"{path or 'value'}: {_describe(exc)}")


def wire_name(cls: type, field: str) -> str:
    """The name ``cls``'s attrs field ``field`` has on the wire."""
    return _WIRE_NAMES.get(cls, {}).get(field, field)


def structure(data: object, cls: type[T], *, what: str) -> T:
    """Structure ``data`` into ``cls``, raising :class:`InputError` naming each bad field."""
    if not isinstance(data, Mapping):
        raise InputError(f"{what} must be a JSON object, got {_json_type(data)}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        problems: list[str] = []
        _flatten(exc, "", problems)
        raise InputError(f"Invalid {what}: " + "; ".join(problems)) from None
    except FieldError as exc:
        field = _WIRE_NAMES.get(cls, {}).get(exc.field, exc.field)
        raise InputError(f"Invalid {what}: {field}: {exc}") from None
    except (TypeError, ValueError, KeyError) as exc:  # a hook outside any class
        raise InputError(f"Invalid {what}: {_describe(exc)}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads_json(text: str | bytes, *, what: str) -> object:
    """Parse strict JSON (no NaN/Infinity) or raise :class:`InputError`."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} is not valid JSON: {exc}") from None


def register_renames(cls: type, renames: Mapping[str, str], **kw: Any) -> None:
    """Use wire names (``apiKey``) for attrs fields (``api_key``) of ``cls``."""
    from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

    _WIRE_NAMES[cls] = dict(renames)
    overrides: dict[str, Any] = {attr: override(rename=wire) for attr, wire in renames.items()}
    converter.register_structure_hook(
        cls, make_dict_structure_fn(cls, converter, **overrides, **kw)
    )
    converter.register_unstructure_hook(cls, make_dict_unstructure_fn(cls, converter, **overrides))
