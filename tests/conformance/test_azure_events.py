"""Key Vault change events through the emulated Storage queue, read with Azure's own SDKs: the
Storage queue SDK (OAuth, Get/Peek/Delete Messages, its XML and error parsing) and the Event Grid SDK's
event models for both schemas, as a consumer in Azure would use them."""
import base64
import json

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.eventgrid import EventGridEvent
from azure.core.messaging import CloudEvent
from azure.storage.queue import QueueClient

from test_azure_sdk import credential, secrets


def queue(emulator, name, cred=None):
    return QueueClient(emulator["queue_account_url"], name, credential=cred or credential(emulator),
                       connection_verify=emulator["ca"])


def drain(q):
    """Every visible message, taken and deleted; returns their decoded JSON bodies."""
    bodies = []
    for m in q.receive_messages(messages_per_page=32, visibility_timeout=30):
        bodies.append(json.loads(base64.b64decode(m.content)))
        assert m.dequeue_count >= 1 and m.pop_receipt and m.inserted_on and m.expires_on
        q.delete_message(m)
    return bodies


def test_a_new_secret_version_is_an_event_grid_event_on_the_queue(emulator):
    q = queue(emulator, "kv-events")
    drain(q)
    version = secrets(emulator).set_secret("evented", "value-1").properties.version
    assert list(q.peek_messages(max_messages=32)), "Peek shows the event before anyone takes it"
    bodies = drain(q)
    events = [EventGridEvent.from_dict(b) for b in bodies]
    ours = [e for e in events if e.subject == "evented"]
    assert len(ours) == 1, bodies
    e = ours[0]
    assert e.event_type == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert e.data["VaultName"] == "conformance" and e.data["ObjectType"] == "Secret"
    assert e.data["Version"] == version
    assert e.data["Id"] == f"https://conformance.vault.azure.net/secrets/evented/{version}"
    assert e.topic.endswith("/providers/Microsoft.KeyVault/vaults/conformance")
    assert "value-1" not in json.dumps(bodies)
    assert not list(q.peek_messages(max_messages=32)), "deleted with the SDK's pop receipt"


def test_the_cloudevents_subscription_parses_as_a_cloudevent(emulator):
    q = queue(emulator, "kv-cloudevents")
    drain(q)
    version = secrets(emulator).set_secret("evented-ce", "v").properties.version
    events = [CloudEvent.from_dict(b) for b in drain(q)]
    ours = [e for e in events if e.subject == "evented-ce"]
    assert len(ours) == 1
    assert ours[0].type == "Microsoft.KeyVault.SecretNewVersionCreated"
    assert ours[0].data["Version"] == version and ours[0].specversion == "1.0"


def test_the_sdk_sees_storage_errors_as_azure_sends_them(emulator):
    with pytest.raises(ResourceNotFoundError) as e:
        list(queue(emulator, "no-such-queue").peek_messages())
    assert e.value.error_code == "QueueNotFound"
    reader = credential(emulator, "reader-client", "reader-secret")
    with pytest.raises(HttpResponseError) as e:
        list(queue(emulator, "kv-events", reader).receive_messages())
    assert e.value.status_code == 403 and e.value.error_code == "AuthorizationPermissionMismatch"
