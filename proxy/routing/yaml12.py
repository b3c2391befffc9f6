"""YAML 1.2 scalars for the flag file, read the way every editor with the JSON Schema reads them.

Only `true`/`false` are booleans, so `use_new_storage: no` is refused as a string instead of quietly
turning the kill switch off, and `revision: 2026-11-23` stays the string it looks like.
"""

from __future__ import annotations

import math
import re

import yaml

_BOOL = "tag:yaml.org,2002:bool"
_FLOAT = "tag:yaml.org,2002:float"
_INT = "tag:yaml.org,2002:int"
#: The tag of an empty value (`field:` with nothing after it).
NULL_TAG = "tag:yaml.org,2002:null"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"

_INT_12 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_12 = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)


class FlagsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's scalars, as editors read the file: booleans
    are true/false only, no dates, integers are decimal, 0o octal or 0x hex (`010` is ten, `1_000` and
    `1:30` are strings), and `1e2` is a number."""

    def construct_yaml_int(self, node: yaml.Node) -> int:
        text = str(self.construct_scalar(node))  # type: ignore[arg-type]
        if text.startswith(("0o", "0x")):
            return int(text[2:], 8 if text[1] == "o" else 16)
        return int(text, 10)

    def construct_yaml_float(self, node: yaml.Node) -> float:
        text = str(self.construct_scalar(node)).lower()  # type: ignore[arg-type]
        if text.endswith(".inf"):
            return -math.inf if text.startswith("-") else math.inf
        return math.nan if text == ".nan" else float(text)


FlagsLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL, _TIMESTAMP, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
FlagsLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
FlagsLoader.add_implicit_resolver(_INT, _INT_12, list("-+0123456789"))  # before float: `10` is an int
FlagsLoader.add_implicit_resolver(_FLOAT, _FLOAT_12, list("-+.0123456789"))
FlagsLoader.add_constructor(_INT, FlagsLoader.construct_yaml_int)
FlagsLoader.add_constructor(_FLOAT, FlagsLoader.construct_yaml_float)
