"""The HTTP inference routes, listed once: the Flask views, the event-loop fast path and the
OpenAPI document are all made from this table; the name guard from the model URL prefixes.

Rules use Flask's syntax. A variable matches one path segment, up to a ':' when one follows it
(TF Serving's `name:predict` carries the model name and the method in one segment).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from serve.core.inference import Codec
from serve.http.codecs import TFSERVING, V2

#: Every URL under these carries a model name first (checked before routing: serve.http.name_guard).
MODEL_PREFIXES = ("/v2/models/", "/v2/repository/models/", "/v1/models/")

_VARIABLE = re.compile(r"<(\w+)>")


@dataclass(frozen=True)
class InferenceRoute:
    """A POST route that runs inference: its Flask rule and the codec of its protocol."""

    rule: str
    codec: Codec
    #: The OpenAPI operationId of the route.
    operation: str
    pattern: re.Pattern = field(init=False, repr=False)

    def __post_init__(self) -> None:
        parts, last = [], 0
        for match in _VARIABLE.finditer(self.rule):
            parts.append(re.escape(self.rule[last : match.start()]))
            follows = self.rule[match.end() : match.end() + 1]
            parts.append(f"(?P<{match[1]}>[^/:]+)" if follows == ":" else f"(?P<{match[1]}>[^/]+)")
            last = match.end()
        parts.append(re.escape(self.rule[last:]))
        object.__setattr__(self, "pattern", re.compile("".join(parts)))

    @property
    def openapi_path(self) -> str:
        """The rule as an OpenAPI path: `{model_name}`, `{model_version}`."""
        return self.rule.replace("<name>", "{model_name}").replace("<version>", "{model_version}")


INFERENCE_ROUTES = (
    InferenceRoute("/v2/models/<name>/infer", V2, "modelInfer"),
    InferenceRoute("/v2/models/<name>/versions/<version>/infer", V2, "modelVersionInfer"),
    InferenceRoute("/v1/models/<name>:predict", TFSERVING, "tfPredict"),
    InferenceRoute("/v1/models/<name>/versions/<version>:predict", TFSERVING, "tfVersionPredict"),
)


def match_inference(path: str) -> tuple[InferenceRoute, str, str | None] | None:
    """The inference route `path` names, with its model name and version; None for others."""
    for route in INFERENCE_ROUTES:
        match = route.pattern.fullmatch(path)
        if match is not None:
            groups = match.groupdict()
            return route, groups["name"], groups.get("version")
    return None
