"""Toxics by type name: creating one from an API request and checking an update.

Toxiproxy's order of checks is kept (see new_toxic), so its HTTP API answers the same errors.
"""

from __future__ import annotations

from aftershock.faultproxy import jsonbody
from aftershock.faultproxy.errors import BadRequestBody, InvalidToxicType
from aftershock.faultproxy.toxic import Direction, NoopToxic, Toxic, parse_direction
from aftershock.faultproxy.toxic_kinds import (
    BandwidthToxic,
    LatencyToxic,
    LimitDataToxic,
    ResetPeerToxic,
    SlicerToxic,
    SlowCloseToxic,
    TimeoutToxic,
)

__all__ = ["Direction", "NoopToxic", "ResetPeerToxic", "SlicerToxic", "Toxic", "checked_update", "new_toxic"]

TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (
        NoopToxic,
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
    )
}


def new_toxic(body: object) -> tuple[Toxic, object]:
    """A toxic from a create request, checked in Toxiproxy's order, and its raw attributes.

    The attributes are validated only after the caller has checked the name is free, since
    Toxiproxy answers 409 for a duplicate before it looks at them.
    """
    obj = jsonbody.expect_object(body, "toxics.ToxicWrapper")
    given = jsonbody.fields(obj, ("name", "type", "stream", "toxicity", "attributes"))
    name = jsonbody.as_str(given.get("name", ""), "ToxicWrapper.name")
    type_name = jsonbody.as_str(given.get("type", ""), "ToxicWrapper.type")
    stream = jsonbody.as_str(given.get("stream", "downstream"), "ToxicWrapper.stream")
    toxicity = jsonbody.as_float(given.get("toxicity", 1.0), "ToxicWrapper.toxicity")
    raw_attributes = given.get("attributes")
    if raw_attributes is not None and not isinstance(raw_attributes, dict):
        raise BadRequestBody(
            f"json: cannot unmarshal {jsonbody.json_kind(raw_attributes)} into Go struct field "
            "ToxicWrapper.attributes of type toxics.NoopToxic"
        )
    parse_direction(stream)
    if not name:
        name = f"{type_name}_{stream}"
    cls = TOXIC_TYPES.get(type_name)
    if cls is None:
        raise InvalidToxicType()
    return cls(name, stream, toxicity), raw_attributes


def checked_update(toxic: Toxic, body: object) -> tuple[float, dict[str, int]]:
    """The new toxicity and attribute values of an update request; name, type and stream stay."""
    obj = jsonbody.expect_object(body, "toxics.ToxicWrapper")
    given = jsonbody.fields(obj, ("attributes", "toxicity"))
    toxicity = toxic.toxicity
    if "toxicity" in given:
        toxicity = jsonbody.as_float(given["toxicity"], "ToxicWrapper.toxicity")
    return toxicity, toxic.checked_attributes(given.get("attributes"))
