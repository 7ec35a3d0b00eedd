"""Every domain failure has a GraphQL error type, and every GraphQL error type shows one."""

from __future__ import annotations

import dataclasses
import inspect
from datetime import UTC, datetime
from typing import Any, get_type_hints

from resolvers import errors as domain
from schema import errors, schema

SAMPLES: dict[Any, Any] = {
    str: "x",
    int: 7,
    datetime: datetime(2027, 1, 31, tzinfo=UTC),
    tuple[str, ...]: ("a", "b"),
}


def domain_failures() -> list[type[domain.Failure]]:
    found, pending = [], [domain.Failure]
    while pending:
        for sub in pending.pop().__subclasses__():
            found.append(sub)
            pending.append(sub)
    return found


def graphql_error_types() -> list[type[errors.Error]]:
    return [
        value
        for value in vars(errors).values()
        if inspect.isclass(value) and issubclass(value, errors.Error) and value is not errors.Error
    ]


def sample(failure_type: type[domain.Failure]) -> domain.Failure:
    hints = get_type_hints(failure_type)
    values = {}
    for field in dataclasses.fields(failure_type):
        hint = hints[field.name]
        values[field.name] = "active" if field.name == "status" else SAMPLES.get(hint)
    return failure_type(**values)


def test_every_domain_failure_has_a_graphql_error_type() -> None:
    missing = [f.__name__ for f in domain_failures() if f not in errors.SHOWN_AS]
    assert missing == []
    assert len(domain_failures()) >= 17


def test_every_graphql_error_type_shows_a_domain_failure() -> None:
    shown = {error_type for error_type, _ in errors.SHOWN_AS.values()}
    assert [t.__name__ for t in graphql_error_types() if t not in shown] == []
    # Every error type in the schema's unions is one of them.
    in_schema = {
        member.name
        for named in schema._schema.type_map.values()
        if hasattr(named, "types") and named.name.endswith("Result")
        for member in named.types
        if "Error" in {i.name for i in member.interfaces}
    }
    assert in_schema and in_schema <= {t.__name__ for t in graphql_error_types()}


def test_each_failure_maps_onto_its_type_with_message_code_and_fields() -> None:
    for failure_type in domain_failures():
        failure = sample(failure_type)
        shown = errors.from_failure(failure)
        error_type, _ = errors.SHOWN_AS[failure_type]
        assert type(shown) is error_type
        assert (shown.message, shown.code) == (failure.message, failure.code)
        assert shown.code == failure_type.code != "FAILURE"
