"""Azure's own SDKs against kv-emulator: challenge auth, client secret and client assertion, reads,
writes and paging of secrets, keys and certificates, and the SDKs' error types."""
import base64
import datetime
import os
import re
import subprocess

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import ClientAssertionCredential, ClientSecretCredential
from azure.keyvault.certificates import CertificateClient, CertificateContentType, CertificatePolicy
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from conftest import ROOT, control

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


# --- Certificates written by the SDK, mounted by the provider -------------------------------------------------
# The SDK writes three certificates the ways users do (PEM import, PFX import with preserveCertOrder,
# create from a self-signed policy); `keyvault-csi mount` then mounts their secrets, and every file is
# checked with `cryptography`, an independent PKCS#12/PEM/X.509 implementation.

def _ca_chain():
    """root → intermediate → leaf (EC P-256), each with SKI and AKI, as a CA issues them."""
    def issue(cn, key, issuer_name, issuer_key, ca):
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
                .issuer_name(issuer_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(days=30))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
                .sign(issuer_key, hashes.SHA256()))
    root_key, int_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "SDK Root")])
    root = issue("SDK Root", root_key, root_name, root_key, True)
    intermediate = issue("SDK Intermediate", int_key, root.subject, root_key, True)
    leaf = issue("sdk.example.com", leaf_key, intermediate.subject, int_key, False)
    return leaf_key, leaf, intermediate, root


def _der(cert):
    return cert.public_bytes(serialization.Encoding.DER)


def _pem_blocks(data):
    """(keys, certificates) of a PEM file, in file order; certificates as DER."""
    keys, certs = [], []
    for match in re.finditer(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n", data, re.S):
        if match.group(1) == b"CERTIFICATE":
            certs.append(_der(x509.load_pem_x509_certificate(match.group(0))))
        else:
            keys.append(serialization.load_pem_private_key(match.group(0), None))
    assert sum(len(m.group(0)) for m in re.finditer(rb"-----BEGIN ([A-Z ]+)-----.*?-----END \1-----\n", data, re.S)) == len(data), \
        "nothing but PEM blocks in the file"
    return keys, certs


def _public(key):
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _mount(emulator, tmp_path, objects, *flags):
    binary = os.environ.get("KEYVAULT_CSI", os.path.join(ROOT, "target", "debug", "keyvault-csi"))
    if not os.path.exists(binary):
        pytest.fail(f"{binary} not built: run `cargo build` (make test does)")
    items = "".join(f"      - |\n        objectName: {o}\n        objectType: secret\n" for o in objects)
    spc = tmp_path / "spc.yaml"
    spc.write_text(
        "apiVersion: secrets-store.csi.x-k8s.io/v1\nkind: SecretProviderClass\nmetadata: {name: sdk-certs}\n"
        "spec:\n  provider: azure\n  parameters:\n    keyvaultName: conformance\n"
        f"    tenantId: {emulator['tenant']}\n    objects: |\n      array:\n{items}")
    (tmp_path / "client-secret").write_text("sdk-secret")
    target = tmp_path / ("files" + "".join(f.replace("=", "-").replace("-", "") for f in flags))
    port = str(emulator["port"])
    run = subprocess.run(
        [binary, "mount", "--class", str(spc), "--target", str(target), "--no-tmpfs",
         "--client-id", "sdk-client", "--client-secret-file", str(tmp_path / "client-secret"),
         "--azure-extra-ca-file", emulator["ca"], "--azure-resolve-to", "127.0.0.1", "--azure-vault-port", port,
         "--azure-authority-host", emulator["authority"], *flags],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return target


def test_sdk_written_certificates_mount_with_every_certificate(emulator, tmp_path):
    client = CertificateClient(emulator["vault_url"], credential(emulator), connection_verify=emulator["ca"], **CHALLENGE)

    # 1. PEM import: the SDK sends base64 of the PEM text with contentType application/x-pem-file.
    key, leaf, intermediate, root = _ca_chain()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem += b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, intermediate, root))
    imported = client.import_certificate(
        "sdk-pem", pem, policy=CertificatePolicy(
            issuer_name="Self", subject="CN=sdk.example.com", content_type=CertificateContentType.pem))
    assert bytes(imported.cer) == _der(leaf)

    # 2. PFX import with preserveCertOrder: root, leaf, intermediate; no localKeyId on any bag.
    pkey, pleaf, pint, proot = _ca_chain()
    pfx = pkcs12.serialize_key_and_certificates(b"sdk", pkey, None, [proot, pleaf, pint], serialization.NoEncryption())
    preserved = client.import_certificate("sdk-preserved", pfx, preserve_order=True)
    assert bytes(preserved.cer) == _der(pleaf)
    moved = client.import_certificate("sdk-moved", pfx)
    assert bytes(moved.cer) == _der(pleaf)

    # 3. Create from a self-signed policy: the SDK polls the pending operation until it completes.
    created = client.begin_create_certificate("sdk-created", CertificatePolicy.get_default()).result()
    assert created.policy.issuer_name == "Self"
    created_leaf = x509.load_der_x509_certificate(bytes(created.cer))
    assert created_leaf.subject.rfc4514_string() == "CN=DefaultPolicy"
    op = client.get_certificate_operation("sdk-created")
    assert op.status == "completed"

    # The Key Vault PFX the emulator serves is readable by an independent PKCS#12 parser.
    stored = secrets(emulator).get_secret("sdk-created")
    assert stored.properties.content_type == "application/x-pkcs12"
    loaded = pkcs12.load_pkcs12(base64.b64decode(stored.value), None)
    assert _der(loaded.cert.certificate) == bytes(created.cer)

    objects = ["sdk-pem", "sdk-preserved", "sdk-moved", "sdk-created"]
    files = _mount(emulator, tmp_path, objects)
    stored_order = _mount(emulator, tmp_path, objects, "--construct-pem-chain=false")

    # PEM-backed: written exactly as stored, the key and all three certificates in the order given.
    keys, certs = _pem_blocks((files / "sdk-pem").read_bytes())
    assert [_public(k) for k in keys] == [_public(key)]
    assert certs == [_der(leaf), _der(intermediate), _der(root)]

    # PFX-backed, stored root, leaf, intermediate: the key, then leaf → intermediate → root with
    # chain construction (upstream's order for a complete chain); the stored order without it.
    keys, certs = _pem_blocks((files / "sdk-preserved").read_bytes())
    assert [_public(k) for k in keys] == [_public(pkey)]
    assert certs == [_der(pleaf), _der(pint), _der(proot)]
    keys, certs = _pem_blocks((stored_order / "sdk-preserved").read_bytes())
    assert [_public(k) for k in keys] == [_public(pkey)]
    assert certs == [_der(proot), _der(pleaf), _der(pint)]
    # Without preserveCertOrder Key Vault puts the leaf first and keeps the others' order.
    _, certs = _pem_blocks((stored_order / "sdk-moved").read_bytes())
    assert certs == [_der(pleaf), _der(proot), _der(pint)]

    # Created from a policy: the key and its self-signed certificate.
    keys, certs = _pem_blocks((files / "sdk-created").read_bytes())
    assert certs == [bytes(created.cer)]
    assert [_public(k) for k in keys] == [_public_of_cert(created_leaf)]


def _public_of_cert(cert):
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def test_listing_secrets_pages_and_carries_tags_and_managed_flags(emulator):
    """What objectSelector reads: GET /secrets across pages of 25, each item's tags, enabled flag and
    `managed` (a certificate's backing secret), as the SDK models them."""
    client = secrets(emulator)
    for i in range(30):
        client.set_secret(f"sel-{i:02}", "v", tags={"team": "payments" if i % 2 else "search", "tier": "gold"})
    client.update_secret_properties("sel-00", enabled=False)
    listed = {p.name: p for p in client.list_properties_of_secrets()}
    selected = [n for n in listed if n.startswith("sel-")]
    assert len(selected) == 30, "the SDK followed nextLink across pages of 25"
    assert listed["sel-01"].tags == {"team": "payments", "tier": "gold"}
    assert listed["sel-00"].enabled is False
    assert listed["seeded-cert"].managed is True, "a certificate's backing secret is listed as managed"
    assert not listed["sel-01"].managed
