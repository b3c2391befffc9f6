"""The admin API's messages as operators read them: protobuf state built from the planes' values, and
messages turned into JSON documents (`turnout status --json`, /status.json).
"""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from turnout.admin.v1 import admin_pb2

from proxy.data.writegate import PauseStatus
from proxy.replication.queue import QueueStats
from proxy.routing.router import Override
from proxy.routing.safetyflags import CanaryPlan
from proxy.safety.canary import CanaryState

_INT64_TYPES = frozenset({
    FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64,
})


def message_document(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, every field present, 64-bit integers as numbers (the proto3 JSON
    mapping writes them as strings, which `jq '.replication.depth > 100'` would compare as text)."""
    doc = MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    _numbers(message, doc)
    return doc


def _numbers(message: Message, doc: dict[str, Any]) -> None:
    for field in message.DESCRIPTOR.fields:
        if field.name not in doc:
            continue
        if field.type in _INT64_TYPES:
            value = doc[field.name]
            doc[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            value = getattr(message, field.name)
            if isinstance(doc[field.name], list):
                for item, item_doc in zip(value, doc[field.name], strict=True):
                    _numbers(item, item_doc)
            elif isinstance(doc[field.name], dict):
                _numbers(value, doc[field.name])


def status_document(status: admin_pb2.StatusResponse) -> dict[str, Any]:
    """What `turnout status --json` and /status.json show: the status with its flags and shadow
    documents decoded."""
    doc = message_document(status)
    doc["flags"] = json.loads(doc.pop("flags_json"))
    doc["shadow"] = json.loads(doc.pop("shadow_json") or "{}")
    doc["health"] = json.loads(doc.pop("health_json") or "{}")
    # Key-space coverage is the proxy's, not only shadow mode's: beside the shadow figures, not in them.
    doc["coverage"] = doc["shadow"].pop("coverage", None)
    return doc


def override_state(override: Override | None) -> admin_pb2.OverrideState:
    if override is None:
        return admin_pb2.OverrideState(active=False)
    state = admin_pb2.OverrideState(active=True, route=override.route.value, reason=override.reason,
                                    since_unix=override.since, automatic=override.automatic)
    if override.trigger is not None:
        trip = override.trigger
        state.trigger.CopyFrom(admin_pb2.TriggerState(name=trip.name, measured=trip.measured,
                                                      threshold=trip.threshold, detail=trip.detail))
    return state


def pause_state(status: PauseStatus) -> admin_pb2.PauseState:
    return admin_pb2.PauseState(paused=status.paused, reason=status.reason, lease_expires_unix=status.lease_expires,
                                leases_expired=status.leases_expired, last_lease_expired_unix=status.last_expired,
                                last_lease_expired_reason=status.last_expired_reason)


def replication_state(stats: QueueStats) -> admin_pb2.ReplicationState:
    return admin_pb2.ReplicationState(depth=stats.depth, oldest_age_seconds=stats.oldest_age_s,
                                      replayed=stats.replayed, failures=stats.failures,
                                      last_error=stats.last_error or "")


def canary_state(canary: CanaryState | None, plan: CanaryPlan | None) -> admin_pb2.CanaryState:
    """The canary as status shows it; inactive (all zero) when the flag file has none (plan None)."""
    if canary is None or plan is None:
        return admin_pb2.CanaryState(active=False)
    return admin_pb2.CanaryState(active=True, step=canary.step, percentage=canary.percentage,
                                 state=canary.phase.value, steps=list(canary.steps), since_unix=canary.since,
                                 reason=canary.reason, operator_hold=canary.operator_hold,
                                 interval_seconds=plan.interval_s)
