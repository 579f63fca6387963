"""/status.schema.json is derived from the model and accepts exactly what /status.json sends."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ratbond.status import StatusServer, build_model, to_dict
from ratbond.status.schema import json_schema
from tests.unit.test_status_snapshots import CLIENT_SNAPSHOT, SERVER_SNAPSHOT

HERE = Path(__file__).parent


def documents() -> list[dict[str, Any]]:
    docs = [to_dict(build_model(s)) for s in (CLIENT_SNAPSHOT, SERVER_SNAPSHOT, {})]
    docs += [json.loads((HERE / f"test_status_recorded_{end}.json").read_text())
             for end in ("client", "server")]
    return docs


def test_every_document_validates_and_tampering_does_not() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    served = StatusServer(lambda: CLIENT_SNAPSHOT).render("/status.schema.json")
    assert served.status == 200
    schema = json.loads(served.body)
    assert schema == json_schema()
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    for doc in documents():
        assert list(validator.iter_errors(doc)) == []
    bad = documents()[0]
    bad["paths"][0]["rates"]["tx_1s"] = "fast"
    bad["state"] = "sideways"
    del bad["tunnel"]["mtu"]
    assert len(list(validator.iter_errors(bad))) == 3


def test_schema_names_every_model_field() -> None:
    schema = json_schema()
    doc = to_dict(build_model(CLIENT_SNAPSHOT))
    assert set(schema["required"]) == set(doc)
    path = schema["properties"]["paths"]["items"]
    assert set(path["required"]) == set(doc["paths"][0])
    assert path["properties"]["rtt_ms"] == {"anyOf": [{"type": "number"}, {"type": "null"}]}
