"""Azure's own SDKs against kv-emulator: challenge auth, client secret and client assertion, reads,
writes and paging of secrets, keys and certificates, and the SDKs' error types."""
import datetime

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientAssertionCredential, ClientSecretCredential
from azure.keyvault.certificates import CertificateClient, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from conftest import control

# The SDKs check that the challenge's resource domain matches the vault's host, comparing the host
# *with its port*; the emulator cannot listen on 443 here, so that one check is turned off with the
# option the SDK's own error message documents. The challenge itself still happens (asserted below).
CHALLENGE = {"verify_challenge_resource": False}


def credential(emulator, client_id="sdk-client", secret="sdk-secret"):
    return ClientSecretCredential(
        emulator["tenant"], client_id, secret,
        authority=emulator["authority"], disable_instance_discovery=True, connection_verify=emulator["ca"],
    )


def secrets(emulator, cred=None):
    return SecretClient(emulator["vault_url"], cred or credential(emulator), connection_verify=emulator["ca"], **CHALLENGE)


def test_secrets_round_trip_with_challenge_auth_and_paging(emulator):
    client = secrets(emulator)
    assert client.get_secret("seeded").value == "from-the-seed"
    for i in range(30):
        client.set_secret("paged", f"value-{i}", content_type="text/plain")
    latest = client.get_secret("paged")
    assert latest.value == "value-29"
    assert latest.properties.content_type == "text/plain"
    versions = list(client.list_properties_of_secret_versions("paged"))
    assert len(versions) == 30, "the SDK followed nextLink across pages of 25"
    oldest = sorted(versions, key=lambda p: p.created_on)[0]
    assert client.get_secret("paged", oldest.version).value == "value-0"
    names = {p.name for p in client.list_properties_of_secrets()}
    assert {"seeded", "paged", "seeded-cert"} <= names
    stats = control(emulator, "stats")
    challenges = [r for r in stats["requests"] if r["vault"] == "conformance" and r["status"] == 401]
    assert challenges, "the SDK went through the 401 challenge"


def test_keys_create_get_and_list(emulator):
    client = KeyClient(emulator["vault_url"], credential(emulator), connection_verify=emulator["ca"], **CHALLENGE)
    rsa = client.create_rsa_key("sdk-rsa", size=3072)
    assert rsa.key_type == "RSA" and len(rsa.key.n) == 384
    ec_key = client.create_ec_key("sdk-ec", curve="P-384")
    assert ec_key.key.crv == "P-384" and len(ec_key.key.x) == 48
    client.create_rsa_key("sdk-rsa", size=2048)
    got = client.get_key("sdk-rsa")
    assert len(got.key.n) == 256
    assert len(list(client.list_properties_of_key_versions("sdk-rsa"))) == 2


def _self_signed_pfx():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imported.example.com")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return pkcs12.serialize_key_and_certificates(b"imported", key, cert, None, serialization.NoEncryption()), cert


def test_certificates_get_import_and_backing_secret(emulator):
    client = CertificateClient(emulator["vault_url"], credential(emulator), connection_verify=emulator["ca"], **CHALLENGE)
    seeded = client.get_certificate("seeded-cert")
    assert seeded.policy.content_type == "application/x-pkcs12"
    leaf = x509.load_der_x509_certificate(bytes(seeded.cer))
    assert leaf.subject.rfc4514_string() == "CN=seeded.example.com"
    assert seeded.secret_id.endswith(f"/secrets/seeded-cert/{seeded.properties.version}")
    pfx, cert = _self_signed_pfx()
    imported = client.import_certificate("sdk-imported", pfx)
    assert bytes(imported.cer) == cert.public_bytes(serialization.Encoding.DER)
    assert len(list(client.list_properties_of_certificate_versions("sdk-imported"))) == 1
    backing = secrets(emulator).get_secret("sdk-imported")
    assert backing.properties.content_type == "application/x-pkcs12"
    assert backing.properties.key_id.endswith(f"/keys/sdk-imported/{imported.properties.version}")


def test_workload_identity_client_assertion(emulator):
    token = control(
        emulator,
        "sa-token?issuer=https://oidc.conformance.test/&namespace=default&name=sdk&audience=api://AzureADTokenExchange",
    )["token"]
    cred = ClientAssertionCredential(
        emulator["tenant"], "wi-client", lambda: token,
        authority=emulator["authority"], connection_verify=emulator["ca"],
    )
    assert secrets(emulator, cred).get_secret("seeded").value == "from-the-seed"


def test_sdk_error_types(emulator):
    with pytest.raises(ClientAuthenticationError) as bad_secret:
        secrets(emulator, credential(emulator, secret="wrong")).get_secret("seeded")
    assert "AADSTS7000215" in str(bad_secret.value)
    with pytest.raises(ResourceNotFoundError) as missing:
        secrets(emulator).get_secret("does-not-exist")
    assert "SecretNotFound" in str(missing.value)
    with pytest.raises(HttpResponseError) as denied:
        secrets(emulator, credential(emulator, "reader-client", "reader-secret")).get_secret("seeded")
    assert denied.value.status_code == 403 and "Forbidden" in str(denied.value)
