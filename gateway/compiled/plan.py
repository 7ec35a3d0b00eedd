"""The compiler: a validated query operation becomes a tree of field plans, built once.

A mutation compiles too when its one root field is a compiled write (gateway.compiled.writes):
the write runs as under graphql-core, and its result's selection set is answered from the plan.

Fields are collected exactly as graphql-core collects them (fragments expanded, fields merged,
`@skip`/`@include` applied), so a tree depends on the values of the variables those directives
read; one tree is kept per combination of them. Arguments that read variables are bound per
request, the others once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLField,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    is_abstract_type,
    is_leaf_type,
    is_object_type,
)
from graphql.execution.collect_fields import (
    FieldDetails,
    FragmentDetails,
    collect_fields,
    collect_subfields,
)
from graphql.execution.values import VariableValues, get_argument_values
from graphql.language import Visitor, visit

from gateway.compiled.fields import FIELD_ARGUMENTS, FIELDS, TYPE_OF
from gateway.compiled.resolver import Kind, Resolver
from gateway.compiled.roots import ROOT_ARGUMENTS, ROOTS
from gateway.compiled.writes import WRITE_ARGUMENTS, WRITES, write_resolver
from schema.arguments import argument_problem

COMPILED_ARGUMENTS = {**ROOT_ARGUMENTS, **WRITE_ARGUMENTS, **FIELD_ARGUMENTS}

# Combinations of @skip/@include variables kept per operation; beyond that, a tree is rebuilt.
MAX_TREES = 16


class Shape(IntEnum):
    LEAF = 0  # a scalar, or a list of scalars, already in its JSON form
    OBJECT = 1
    OBJECTS = 2  # a list of non-null objects
    TYPENAME = 3


@dataclass(slots=True)
class FieldPlan:
    key: str
    shape: Shape
    kind: Kind
    fn: Callable[..., Any]
    non_null: bool
    roles: frozenset[str] | None
    args: Mapping[str, Any]
    # Set when an argument reads a variable: the arguments are then bound per request.
    bind: tuple[GraphQLField, FieldNode] | None
    children: list[FieldPlan] | None
    typename: str | None = None
    # A union: the member type each value is answered as, and the plans of each member.
    type_of: Callable[[Any], str] | None = None
    variants: dict[str, list[FieldPlan]] | None = None
    # Literal arguments whose text schema.arguments refuses: checked once, here, not per request.
    refused: bool = False


def compile_operation(
    schema: GraphQLSchema, document: DocumentNode, operation_name: str | None
) -> Operation | None:
    """The plan of an operation, or None when it touches anything not compiled."""
    operation = None
    fragments: dict[str, FragmentDetails] = {}
    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode):
            name = definition.name.value if definition.name else None
            if operation_name is None or name == operation_name:
                operation = definition
        elif isinstance(definition, FragmentDefinitionNode):
            if definition.variable_definitions:
                return None  # fragment arguments (experimental): graphql-core only
            fragments[definition.name.value] = FragmentDetails(definition)
    if operation is None:
        return None
    if operation.operation == OperationType.QUERY:
        root = schema.query_type
    elif operation.operation == OperationType.MUTATION and _is_one_write(operation):
        root = schema.mutation_type
    else:
        return None
    if root is None or not _is_covered(schema, operation.selection_set, root, fragments, set()):
        return None
    finder = _DirectiveVariables()
    visit(operation, finder)
    for details in fragments.values():
        visit(details.definition, finder)
    return Operation(schema, root, operation, fragments, tuple(sorted(finder.names)))


def _is_one_write(operation: OperationDefinitionNode) -> bool:
    """One root field (besides __typename), written out: several writes are graphql-core's."""
    selections = operation.selection_set.selections
    if not all(isinstance(s, FieldNode) for s in selections):
        return False
    return sum(s.name.value != "__typename" for s in selections) == 1  # type: ignore[attr-defined]


class Operation:
    """A compiled operation: its trees, one per combination of @skip/@include variables."""

    def __init__(
        self,
        schema: GraphQLSchema,
        root: GraphQLObjectType,
        operation: OperationDefinitionNode,
        fragments: dict[str, FragmentDetails],
        directive_variables: tuple[str, ...],
    ) -> None:
        self.schema = schema
        self.root = root
        self.is_mutation = operation.operation == OperationType.MUTATION
        self.operation = operation
        self.fragments = fragments
        self.directive_variables = directive_variables
        self.variable_definitions = operation.variable_definitions or ()
        self._trees: dict[tuple[Any, ...], list[FieldPlan]] = {}
        # Whether every field's reads may run on the loop (SQLite: gateway.local_reads); cleared
        # for good by the first tree with one that may not (Resolver.on_loop): a request reads
        # in one snapshot, so all on the loop or all on one pooled connection.
        self.reads_on_loop = True

    def tree(self, variables: VariableValues) -> list[FieldPlan]:
        coerced = variables.coerced
        key = tuple(coerced.get(name) for name in self.directive_variables)
        tree = self._trees.get(key)
        if tree is None:
            if len(self._trees) >= MAX_TREES:
                self._trees.clear()
            tree = self._trees[key] = self._build(variables)
        return tree

    def _build(self, variables: VariableValues) -> list[FieldPlan]:
        root = self.root
        grouped = collect_fields(
            self.schema, self.fragments, variables, root, self.operation
        ).grouped_field_set
        table: Mapping[str, Resolver] = ROOTS
        if self.is_mutation:
            # The write remembers its outcome under the key it is answered as (see writes).
            writes: dict[str, Resolver] = {}
            for key, details in grouped.items():
                name = details[0].node.name.value
                if name != "__typename":
                    writes[name] = write_resolver(self.schema, root.fields[name], name, key)
            table = writes
        return self._plans(root, grouped, table, variables)

    def _plans(
        self,
        parent: GraphQLObjectType,
        grouped: Mapping[str, list[FieldDetails]],
        table: Mapping[str, Resolver],
        variables: VariableValues,
    ) -> list[FieldPlan]:
        plans = []
        for key, details in grouped.items():
            node = details[0].node
            name = node.name.value
            if name == "__typename":
                plans.append(
                    FieldPlan(key, Shape.TYPENAME, Kind.SOURCE, str, True, None, {}, None, None)
                )
                plans[-1].typename = parent.name
                continue
            field = parent.fields[name]
            resolver = table[name]
            if not resolver.on_loop:
                self.reads_on_loop = False
            named = get_named_type(field.type)
            shape = Shape.LEAF
            children = None
            variants = None
            if is_object_type(named):
                shape = Shape.OBJECTS if _is_list(field) else Shape.OBJECT
                children = self._members(named, details, variables)
            elif is_abstract_type(named):
                shape = Shape.OBJECTS if _is_list(field) else Shape.OBJECT
                # Fields are collected for each member as graphql-core collects them for the
                # value's runtime type: fragments on other members fall away.
                variants = {
                    member.name: self._members(member, details, variables)
                    for member in self.schema.get_possible_types(named)  # type: ignore[arg-type]
                }
            reads_variables = any(
                _reads_variable(argument.value) for argument in node.arguments or ()
            )
            args = {} if reads_variables else get_argument_values(field, node, variables)
            plans.append(
                FieldPlan(
                    key=key,
                    shape=shape,
                    kind=resolver.kind,
                    fn=resolver.fn,
                    non_null=isinstance(field.type, GraphQLNonNull),
                    roles=_roles(field),
                    args=args,
                    bind=(field, node) if reads_variables else None,
                    children=children,
                    type_of=TYPE_OF[named.name] if variants is not None else None,
                    variants=variants,
                    refused=bool(args) and argument_problem(args) is not None,
                )
            )
        return plans

    def _members(
        self,
        object_type: GraphQLObjectType,
        details: list[FieldDetails],
        variables: VariableValues,
    ) -> list[FieldPlan]:
        sub = collect_subfields(
            self.schema, self.fragments, variables, self.operation, object_type, details
        ).grouped_field_set
        return self._plans(object_type, sub, FIELDS[object_type.name], variables)


def _is_list(field: GraphQLField) -> bool:
    field_type = field.type
    if isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    return isinstance(field_type, GraphQLList)


def _roles(field: GraphQLField) -> frozenset[str] | None:
    definition = field.extensions.get("strawberry-definition")
    classes = getattr(definition, "permission_classes", None) or []
    roles: frozenset[str] | None = None
    for permission in classes:
        allowed = permission.roles
        roles = allowed if roles is None else roles & allowed
    return roles


def _has_known_permissions(field: GraphQLField) -> bool:
    definition = field.extensions.get("strawberry-definition")
    classes = getattr(definition, "permission_classes", None) or []
    return all(isinstance(getattr(p, "roles", None), frozenset) for p in classes)


def _is_supported_type(field: GraphQLField) -> bool:
    """A leaf, an object, a compiled union, or a list of non-null items (of one); not nested."""
    field_type = field.type
    if isinstance(field_type, GraphQLNonNull):
        field_type = field_type.of_type
    if isinstance(field_type, GraphQLList):
        item = field_type.of_type
        if not isinstance(item, GraphQLNonNull) or isinstance(item.of_type, GraphQLList):
            return False
        field_type = item.of_type
    if is_abstract_type(field_type):
        return field_type.name in TYPE_OF  # type: ignore[union-attr]
    return is_leaf_type(field_type) or is_object_type(field_type)


def _is_covered(
    schema: GraphQLSchema,
    selection_set: SelectionSetNode,
    parent: GraphQLObjectType,
    fragments: Mapping[str, FragmentDetails],
    spreading: set[str],
) -> bool:
    """Whether every field the selection may ever select (any @skip/@include) is compiled."""
    if is_abstract_type(parent):
        # Covered when it is covered on every member the value may turn out to be.
        return parent.name in TYPE_OF and all(
            _is_covered(schema, selection_set, member, fragments, spreading)
            for member in schema.get_possible_types(parent)  # type: ignore[arg-type]
        )
    table: Mapping[str, Any] | None
    if parent is schema.query_type:
        table = ROOTS
    elif parent is schema.mutation_type:
        table = WRITES
    else:
        table = FIELDS.get(parent.name)
    if table is None:
        return False
    for selection in selection_set.selections:
        if isinstance(selection, FieldNode):
            name = selection.name.value
            if name == "__typename":
                continue
            field = parent.fields.get(name)
            if field is None or name not in table:
                return False
            if not _is_supported_type(field) or not _has_known_permissions(field):
                return False
            # An argument the compiled field does not read (one added to the schema later, say)
            # would be silently ignored: graphql-core answers such a selection.
            known = COMPILED_ARGUMENTS.get((parent.name, name), frozenset())
            if any(argument.name.value not in known for argument in selection.arguments or ()):
                return False
            named = get_named_type(field.type)
            if selection.selection_set is not None and not _is_covered(
                schema, selection.selection_set, named, fragments, spreading
            ):
                return False
            continue
        if isinstance(selection, InlineFragmentNode):
            condition = selection.type_condition
            inner = selection.selection_set
        else:
            assert isinstance(selection, FragmentSpreadNode)
            name = selection.name.value
            if name in spreading or name not in fragments:
                return False
            definition = fragments[name].definition
            condition, inner = definition.type_condition, definition.selection_set
            spreading = spreading | {name}
        if condition is not None and not _applies(schema, condition.name.value, parent):
            continue  # never selected on this type: graphql-core skips it too
        if not _is_covered(schema, inner, parent, fragments, spreading):
            return False
    return True


def _applies(schema: GraphQLSchema, condition: str, parent: GraphQLObjectType) -> bool:
    condition_type = schema.get_type(condition)
    if condition_type is parent:
        return True
    return is_abstract_type(condition_type) and schema.is_sub_type(condition_type, parent)  # type: ignore[arg-type]


def _reads_variable(value: Any) -> bool:
    if isinstance(value, VariableNode):
        return True
    values = getattr(value, "values", None) or getattr(value, "fields", None) or ()
    return any(_reads_variable(getattr(v, "value", v)) for v in values)


class _DirectiveVariables(Visitor):
    """The variables that @skip and @include read: the trees of an operation vary with them."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def enter_directive(self, node: Any, *_: Any) -> None:
        if node.name.value in ("skip", "include"):
            for argument in node.arguments or ():
                if isinstance(argument.value, VariableNode):
                    self.names.add(argument.value.name.value)
