"""Kubernetes' own rules for names, label keys and values, taints, and label selectors.

Messages follow apimachinery's validation wording, so a 422 from here reads like one from a cluster.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
CONFIG_KEY = re.compile(r"[-._a-zA-Z0-9]+")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


@dataclass(frozen=True)
class Cause:
    field: str
    message: str
    reason: str = "FieldValueInvalid"


def _quote(value: object) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def invalid(field: str, value: object, detail: str) -> Cause:
    return Cause(field, f"Invalid value: {_quote(value)}: {detail}")


def required(field: str) -> Cause:
    return Cause(field, "Required value", "FieldValueRequired")


def dns_subdomain_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 253:
        errors.append("must be no more than 253 characters")
    if not DNS1123_SUBDOMAIN.fullmatch(value):
        errors.append(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.',"
            " and must start and end with an alphanumeric character"
        )
    return errors


def dns_label_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not DNS1123_LABEL.fullmatch(value):
        errors.append(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-',"
            " and must start and end with an alphanumeric character"
        )
    return errors


def qualified_name_errors(value: str) -> list[str]:
    """A label key or taint key: ``[prefix/]name``, prefix a DNS subdomain, name <= 63 characters."""
    prefix, slash, name = value.rpartition("/")
    errors = []
    if slash:
        if not prefix:
            errors.append("prefix part must be non-empty")
        else:
            errors += ["prefix part " + e for e in dns_subdomain_errors(prefix)]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    elif not QUALIFIED_NAME.fullmatch(name):
        errors.append(
            "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end"
            " with an alphanumeric character"
        )
    if value.count("/") > 1:
        errors.append("a qualified name must consist of a name part and an optional prefix part")
    return errors


def label_value_errors(value: str) -> list[str]:
    errors = []
    if len(value) > 63:
        errors.append("must be no more than 63 characters")
    if not LABEL_VALUE.fullmatch(value):
        errors.append(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.',"
            " and must start and end with an alphanumeric character"
        )
    return errors


def validate_metadata(meta: Mapping, *, namespaced: bool) -> list[Cause]:
    causes: list[Cause] = []
    name = meta.get("name")
    if not name:
        causes.append(required("metadata.name"))
    elif not isinstance(name, str):
        causes.append(invalid("metadata.name", name, "must be a string"))
    else:
        causes += [invalid("metadata.name", name, e) for e in dns_subdomain_errors(name)]
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is not None and not isinstance(value, dict):
            causes.append(invalid(f"metadata.{field}", value, "must be a map of strings"))
    for key, value in (meta.get("labels") or {}).items():
        causes += [invalid("metadata.labels", key, e) for e in qualified_name_errors(key)]
        if not isinstance(value, str):
            causes.append(invalid("metadata.labels", value, "label values must be strings"))
        else:
            causes += [invalid("metadata.labels", value, e) for e in label_value_errors(value)]
    for key, value in (meta.get("annotations") or {}).items():
        causes += [invalid("metadata.annotations", key, e) for e in qualified_name_errors(key.lower())]
        if not isinstance(value, str):
            causes.append(invalid("metadata.annotations", value, "annotation values must be strings"))
    return causes


def validate_taints(taints: object) -> list[Cause]:
    if taints is None:
        return []
    if not isinstance(taints, list):
        return [invalid("spec.taints", taints, "must be a list")]
    causes: list[Cause] = []
    seen: set[tuple[str, str]] = set()
    for i, taint in enumerate(taints):
        where = f"spec.taints[{i}]"
        if not isinstance(taint, dict):
            causes.append(invalid(where, taint, "must be an object"))
            continue
        key, value, effect = taint.get("key", ""), taint.get("value", ""), taint.get("effect", "")
        if not key:
            causes.append(required(f"{where}.key"))
        else:
            causes += [invalid(f"{where}.key", key, e) for e in qualified_name_errors(key)]
        if value:
            causes += [invalid(f"{where}.value", value, e) for e in label_value_errors(value)]
        if not effect:
            causes.append(required(f"{where}.effect"))
        elif effect not in TAINT_EFFECTS:
            causes.append(
                Cause(
                    f"{where}.effect",
                    f"Unsupported value: {_quote(effect)}: supported values: "
                    + ", ".join(_quote(e) for e in TAINT_EFFECTS),
                    "FieldValueNotSupported",
                )
            )
        if (key, effect) in seen:
            causes.append(
                Cause(
                    f"{where}",
                    f"Duplicate value: {_quote(key + ':' + effect)}:"
                    " taints must be unique by key and effect pair",
                    "FieldValueDuplicate",
                )
            )
        seen.add((key, effect))
    return causes


def validate_data_map(field: str, data: object, *, base64_values: bool) -> list[Cause]:
    if data is None:
        return []
    if not isinstance(data, dict):
        return [invalid(field, data, "must be a map")]
    causes: list[Cause] = []
    for key, value in data.items():
        if len(key) > 253 or not CONFIG_KEY.fullmatch(key):
            causes.append(
                invalid(
                    field, key, "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
                )
            )
        if not isinstance(value, str):
            causes.append(invalid(f"{field}[{key}]", "<non-string>", "must be a string"))
        elif base64_values:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                causes.append(invalid(f"{field}[{key}]", "<value omitted>", "illegal base64 data"))
    return causes


# -- label selectors ---------------------------------------------------------------------------------


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if not present:
            return False
        try:
            number = int(value or "")
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


_TOKEN = re.compile(r"\s*(!=|==|=|!|\(|\)|,|>|<|[^\s!=(),<>]+)")


def _tokens(text: str) -> list[str]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise SelectorError(f"unable to parse requirement: found {text[pos:]!r}")
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def parse_selector(text: str | None) -> list[Requirement]:
    """Kubernetes' label selector syntax: ``a=b,c!=d,e,!f,g in (x,y),h notin (z),i>1``."""
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    requirements: list[Requirement] = []
    i = 0

    def need(what: str) -> str:
        nonlocal i
        if i >= len(tokens):
            raise SelectorError(f"unable to parse requirement: expected {what}")
        tok = tokens[i]
        i += 1
        return tok

    while i < len(tokens):
        tok = need("a key")
        if tok == "!":
            key = need("a key after '!'")
            requirements.append(Requirement(key, "!"))
        else:
            key = tok
            nxt = tokens[i] if i < len(tokens) else ","
            if nxt == ",":
                requirements.append(Requirement(key, "exists"))
            elif nxt in ("=", "==", "!="):
                i += 1
                value = tokens[i] if i < len(tokens) and tokens[i] != "," else ""
                if value:
                    i += 1
                requirements.append(Requirement(key, "!=" if nxt == "!=" else "=", (value,)))
            elif nxt in (">", "<"):
                i += 1
                value = need("an integer value")
                try:
                    int(value)
                except ValueError:
                    raise SelectorError(
                        f"unable to parse requirement: for 'gt', 'lt' operators, "
                        f"the value must be an integer: {value!r}"
                    ) from None
                requirements.append(Requirement(key, "gt" if nxt == ">" else "lt", (value,)))
            elif nxt in ("in", "notin"):
                i += 1
                if need("'('") != "(":
                    raise SelectorError("unable to parse requirement: expected '('")
                values: list[str] = []
                while True:
                    tok = need("a value or ')'")
                    if tok == ")":
                        break
                    if tok == ",":
                        continue
                    values.append(tok)
                if not values:
                    raise SelectorError(f"unable to parse requirement: {nxt} needs at least one value")
                requirements.append(Requirement(key, nxt, tuple(values)))
            else:
                raise SelectorError(f"unable to parse requirement: found {nxt!r}, expected an operator")
        if i < len(tokens):
            if tokens[i] != ",":
                raise SelectorError(f"unable to parse requirement: found {tokens[i]!r}, expected ','")
            i += 1
            if i >= len(tokens):
                raise SelectorError("unable to parse requirement: found trailing ','")
    for req in requirements:
        errors = qualified_name_errors(req.key)
        if errors:
            raise SelectorError(f"unable to parse requirement: key {req.key!r}: {'; '.join(errors)}")
        for value in req.values:
            errors = label_value_errors(value)
            if errors:
                raise SelectorError(f"unable to parse requirement: value {value!r}: {'; '.join(errors)}")
    return requirements


def selector_matches(requirements: list[Requirement], labels: Mapping[str, str]) -> bool:
    return all(req.matches(labels) for req in requirements)


def parse_field_selector(text: str | None) -> list[tuple[str, bool, str]]:
    """``metadata.name=x,metadata.namespace!=y`` -> [(field, equal, value)]; only the common fields."""
    if not text or not text.strip():
        return []
    result = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*([A-Za-z.]+)\s*(==|=|!=)\s*(\S*)\s*", part)
        if not match:
            raise SelectorError(f"invalid selector: {part!r}")
        field, op, value = match.groups()
        if field not in ("metadata.name", "metadata.namespace", "type"):
            raise SelectorError(f'field label not supported: "{field}"')
        result.append((field, op != "!=", value))
    return result
