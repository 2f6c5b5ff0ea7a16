"""Connect CA rotation (FakeConsul.rotate_ca) and the first run of interval checks.

Rotation as agent/consul/leader_connect_ca.go (UpdateConfiguration, SignCertificate) and
agent/leafcert/generate.go (attemptLeafRefresh) do it: a new active root in the same trust
domain, the old one kept inactive and cross-signing the new one, every cached leaf re-issued.
"""

import asyncio

from cryptography import x509

from consulspawner_dev.fakeconsul import FakeConsul, state

ROOTS = "/v1/agent/connect/ca/roots"
LEAF = "/v1/agent/connect/ca/leaf/web"


def _certs(pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem.encode())


async def test_rotation_keeps_the_trust_domain_and_the_old_root_inactive(fake, client, raw):
    before = await client.agent.connect.ca.roots()
    _, headers, _ = await raw(fake, "GET", ROOTS)
    index = int(headers["X-Consul-Index"])
    new_id = fake.rotate_ca()
    after = await client.agent.connect.ca.roots()
    assert after["ActiveRootID"] == new_id != before["ActiveRootID"]
    assert after["TrustDomain"] == before["TrustDomain"]
    old, new = after["Roots"]  # UpdateConfiguration appends the new root after the old ones
    assert (old["ID"], old["Active"]) == (before["ActiveRootID"], False)
    assert old["RootCert"] == before["Roots"][0]["RootCert"]
    assert (new["ID"], new["Active"]) == (new_id, True)
    assert "RotatedOutAt" not in old  # structs.CARoot: `json:"-"`
    assert new["SerialNumber"] == old["SerialNumber"] + 1
    assert new["CreateIndex"] > old["CreateIndex"]
    new_root = _certs(new["RootCert"])[0]
    san = new_root.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{after['TrustDomain']}"]
    # The old root cross-signed the new one: same subject and key, issued by the old root.
    (cross,) = _certs("".join(new["IntermediateCerts"]))
    old_root = _certs(old["RootCert"])[0]
    assert cross.subject == new_root.subject and cross.public_key() == new_root.public_key()
    cross.verify_directly_issued_by(old_root)
    _, headers, _ = await raw(fake, "GET", ROOTS)
    assert int(headers["X-Consul-Index"]) > index
    # The non-agent endpoint answers the same.
    assert (await client.connect.ca.roots())["ActiveRootID"] == new_id


async def test_rotation_reissues_cached_leaves_and_wakes_blocking_queries(fake, client, raw, arrived, attempts_of):
    first = await client.agent.connect.ca.leaf("web")
    _, leaf_headers, _ = await raw(fake, "GET", LEAF)
    _, roots_headers, _ = await raw(fake, "GET", ROOTS)
    leaf_index, roots_index = int(leaf_headers["X-Consul-Index"]), int(roots_headers["X-Consul-Index"])
    before_leaf, before_roots = attempts_of(fake, LEAF), attempts_of(fake, ROOTS)
    leaf_wait = asyncio.ensure_future(raw(fake, "GET", LEAF, params={"index": str(leaf_index), "wait": "30s"}))
    roots_wait = asyncio.ensure_future(raw(fake, "GET", ROOTS, params={"index": str(roots_index), "wait": "30s"}))
    await arrived(fake, LEAF, before_leaf)
    await arrived(fake, ROOTS, before_roots)
    assert not leaf_wait.done() and not roots_wait.done()
    new_id = fake.rotate_ca()
    status, headers, _ = await asyncio.wait_for(leaf_wait, 10)
    assert status == 200 and int(headers["X-Consul-Index"]) > leaf_index
    status, headers, _ = await asyncio.wait_for(roots_wait, 10)
    assert status == 200 and int(headers["X-Consul-Index"]) > roots_index

    renewed = await client.agent.connect.ca.leaf("web")
    assert renewed["SerialNumber"] != first["SerialNumber"]
    assert renewed["ModifyIndex"] > first["ModifyIndex"]
    assert renewed["ServiceURI"] == first["ServiceURI"]  # same trust domain, same identity
    roots = await client.agent.connect.ca.roots()
    old_root, new_root = (_certs(r["RootCert"])[0] for r in roots["Roots"])
    assert roots["Roots"][1]["ID"] == new_id
    # CertPEM: the leaf, then the new root's intermediates (the cross-signed certificate), so a
    # peer still trusting only the old root verifies it: leaf -> cross-signed -> old root.
    leaf, cross = _certs(renewed["CertPEM"])
    leaf.verify_directly_issued_by(new_root)
    leaf.verify_directly_issued_by(cross)
    cross.verify_directly_issued_by(old_root)
    # A leaf first asked for after the rotation is issued by the new root as well.
    db = _certs((await client.agent.connect.ca.leaf("db"))["CertPEM"])[0]
    db.verify_directly_issued_by(new_root)


async def test_rotation_without_keep_old_prunes_the_old_root(fake, client):
    first = await client.agent.connect.ca.leaf("web")
    old_id = (await client.agent.connect.ca.roots())["ActiveRootID"]
    fake.rotate_ca()
    new_id = fake.rotate_ca(keep_old=False)
    roots = await client.agent.connect.ca.roots()
    assert [r["ID"] for r in roots["Roots"]] == [new_id] and old_id != new_id
    assert roots["Roots"][0]["IntermediateCerts"] is None
    renewed = await client.agent.connect.ca.leaf("web")
    assert len(_certs(renewed["CertPEM"])) == 1 and renewed["SerialNumber"] != first["SerialNumber"]


async def test_rotations_accumulate_inactive_roots(fake, client):
    ids = [(await client.agent.connect.ca.roots())["ActiveRootID"], fake.rotate_ca(), fake.rotate_ca()]
    roots = await client.agent.connect.ca.roots()
    assert [r["ID"] for r in roots["Roots"]] == ids
    assert [r["Active"] for r in roots["Roots"]] == [False, False, True]
    # Each new root is cross-signed by the one it replaced.
    certs = [_certs(r["RootCert"])[0] for r in roots["Roots"]]
    for i in (1, 2):
        (cross,) = _certs(roots["Roots"][i]["IntermediateCerts"][0])
        cross.verify_directly_issued_by(certs[i - 1])


async def test_tcp_check_first_run_is_staggered_when_asked(make_client, wait_for, monkeypatch):
    """check_initial_stagger: the first dial waits lib.RandomStagger(Interval), as Consul's
    CheckTCP.run does; without it the fake dials at once (test_checks_reaping)."""
    draws = []

    def uniform(low, high):
        draws.append((low, high))
        return 0.75 * high

    monkeypatch.setattr(state.random, "uniform", uniform)
    with FakeConsul(reap_interval=0.05, check_initial_stagger=True).start() as f:
        c = make_client(f)
        registered = f.state.now()
        await c.agent.service.register("web", service_id="w", port=80, connect={"sidecar_service": {"port": 1}})
        check = "service:w-sidecar-proxy:1"
        assert draws == [(0, 10.0)]  # the sidecar's default 10 s interval
        assert 7.5 <= f.state.checks[check]["_next_run"] - registered <= 7.5 + 1.0
        assert f.snapshot()["checks"][check]["Output"] == ""
        f.advance(8)
        await wait_for(lambda: f.snapshot()["checks"][check]["Output"] != "", timeout=10)
