"""The topic tree, in one place (docs/fleet.md shows it).

``ratbond/<role>/<name>/status``  retained JSON status model, every few seconds
``ratbond/<role>/<name>/events``  JSON events as they happen (not retained)
``ratbond/<role>/<name>/state``   retained ``online`` / ``offline`` (the last will)
``ratbond/router/<id>/hello``     retained enrolment and stats of a ``connectaggregator``
``ratbond/router/<id>/settings``  retained signed settings for that router (the fleet's)

``role`` is ``client``, ``server`` or ``router``; a name is one level without wildcards.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

ROOT = "ratbond"
Role = Literal["client", "server", "router"]
ROLES: tuple[Role, ...] = ("client", "server", "router")
Kind = Literal["status", "events", "state", "hello", "settings"]
KINDS: tuple[Kind, ...] = ("status", "events", "state", "hello", "settings")
ONLINE = "online"
OFFLINE = "offline"


class TopicError(ValueError):
    """A name that cannot be one topic level."""


class Topic(NamedTuple):
    role: Role
    name: str
    kind: Kind


def _level(name: str) -> str:
    if not name or any(c in name for c in "/+#\0") or len(name.encode()) > 128:
        raise TopicError(f"{name!r} cannot be one MQTT topic level")
    return name


def topic(role: Role, name: str, kind: Kind) -> str:
    return f"{ROOT}/{role}/{_level(name)}/{kind}"


def status_topic(role: Role, name: str) -> str:
    return topic(role, name, "status")


def events_topic(role: Role, name: str) -> str:
    return topic(role, name, "events")


def state_topic(role: Role, name: str) -> str:
    return topic(role, name, "state")


def hello_topic(router_id: str) -> str:
    return topic("router", router_id, "hello")


def settings_topic(router_id: str) -> str:
    return topic("router", router_id, "settings")


def parse(text: str) -> Topic | None:
    """The parts of one of our topics, or None for anything else."""
    parts = text.split("/")
    if len(parts) != 4 or parts[0] != ROOT or not parts[2]:
        return None
    role, name, kind = parts[1], parts[2], parts[3]
    for r in ROLES:
        if r == role:
            for k in KINDS:
                if k == kind:
                    return Topic(r, name, k)
    return None


#: What the fleet controller subscribes to: every end's status, state, events and hello.
FLEET_SUBSCRIPTIONS = (f"{ROOT}/+/+/status", f"{ROOT}/+/+/state", f"{ROOT}/+/+/events",
                       f"{ROOT}/router/+/hello")
