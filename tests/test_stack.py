"""The production stack (docker/stack/), checked as far as it can be without its images:
the compose file by `docker compose config`, every Consul HCL file parsed and held to the fields
Consul requires, every file the compose file and Dockerfiles name present, and the stack's
jupyterhub_config.py loaded through JupyterHub's own loader into a working ConsulSpawner."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STACK = ROOT / "docker" / "stack"
COMPOSE = STACK / "compose.yaml"


# -- a small reader for the HCL that Consul's files use ------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*|//[^\n]*|/\*.*?\*/)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>-?\d+(?:\.\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_\-.]*)
  | (?P<punct>[{}\[\]=,:])
    """,
    re.VERBOSE | re.DOTALL,
)


class HCLError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise HCLError(f"line {line}: unexpected {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.lastgroup != "ws":
            out.append((m.lastgroup, m.group()))
    return out


def parse_hcl(text: str) -> dict:
    """HCL 1 as Consul reads it: ``key = value``, ``block "label" { ... }`` (repeated blocks become
    a list), lists, objects, strings, numbers and booleans. Duplicate attributes are an error."""
    tokens = _tokens(text)
    pos = 0

    def peek(k=0):
        return tokens[pos + k] if pos + k < len(tokens) else ("eof", "")

    def take(kind=None, value=None):
        nonlocal pos
        tok = peek()
        if (kind and tok[0] != kind) or (value and tok[1] != value):
            raise HCLError(f"expected {value or kind}, found {tok[1]!r}")
        pos += 1
        return tok

    def value():
        kind, text_ = peek()
        if kind == "string":
            take()
            return bytes(text_[1:-1], "utf-8").decode("unicode_escape")
        if kind == "number":
            take()
            return float(text_) if "." in text_ else int(text_)
        if kind == "word" and text_ in ("true", "false"):
            take()
            return text_ == "true"
        if text_ == "[":
            take()
            items = []
            while peek()[1] != "]":
                items.append(value())
                if peek()[1] == ",":
                    take()
            take(value="]")
            return items
        if text_ == "{":
            take()
            body = entries("}")
            take(value="}")
            return body
        raise HCLError(f"unexpected {text_!r}")

    def entries(end):
        body: dict = {}
        while peek()[1] != end and peek()[0] != "eof":
            kind, key = take()
            if kind not in ("word", "string"):
                raise HCLError(f"expected a key, found {key!r}")
            key = key.strip('"')
            if peek()[1] in ("=", ":"):
                take()
                if key in body:
                    raise HCLError(f"{key!r} set twice")
                body[key] = value()
            else:
                labels = []
                while peek()[0] == "string":
                    labels.append(take()[1][1:-1])
                take(value="{")
                block = entries("}")
                take(value="}")
                for label in reversed(labels):
                    block = {label: block}
                if key in body and not labels:
                    previous = body[key]
                    body[key] = (previous if isinstance(previous, list) else [previous]) + [block]
                elif key in body:
                    body[key] = {**body[key], **block}
                else:
                    body[key] = block
            if peek()[1] == ",":
                take()
        return body

    result = entries("eof")
    if peek()[0] != "eof":
        raise HCLError(f"unexpected {peek()[1]!r}")
    return result


def test_hcl_reader_reads_what_consul_files_hold():
    parsed = parse_hcl(
        '# c\nacl { enabled = true }\nservice_prefix "jupyter-" { policy = "write" }\n'
        'Sources = [ { Name = "a", Action = "allow" }, ]\nupstreams { x = 1 }\nupstreams { x = 2 }\n'
        "ports { https = 8501  grpc = -1 } /* c */ // c\n"
    )
    assert parsed == {
        "acl": {"enabled": True},
        "service_prefix": {"jupyter-": {"policy": "write"}},
        "Sources": [{"Name": "a", "Action": "allow"}],
        "upstreams": [{"x": 1}, {"x": 2}],
        "ports": {"https": 8501, "grpc": -1},
    }
    with pytest.raises(HCLError):
        parse_hcl('a = "x"\na = "y"')
    with pytest.raises(HCLError):
        parse_hcl("acl { enabled = true")


def load(path: Path) -> dict:
    return parse_hcl(path.read_text())


# -- docker compose config ---------------------------------------------------------------------------------


def _compose_command() -> list[str]:
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.fail(
        "Neither `docker compose` nor `docker-compose` is installed, so docker/stack/compose.yaml cannot be "
        "validated. Install Debian's package: apt-get install -y --no-install-recommends docker-compose"
    )


def _compose(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*_compose_command(), "-f", str(COMPOSE), *args], capture_output=True, text=True, cwd=STACK)


def test_compose_file_is_valid():
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr
    result = _compose("--profile", "images", "config", "--services")
    assert result.returncode == 0, result.stderr
    services = set(result.stdout.split())
    assert services >= {
        "hub-jwt-key-init",
        "consul-tls-init",
        "consul-server",
        "consul-client",
        "consul-acl-init",
        "trino-coordinator",
        "trino-coordinator-sidecar",
        "trino-worker",
        "trino-worker-sidecar",
        "hub",
        "janitor",
        "envoy-sidecar",
        "notebook",
    }


def _compose_model() -> dict:
    import yaml  # PyYAML: a dependency of jupyterhub (through jupyter_events)

    return yaml.safe_load(COMPOSE.read_text())


def test_every_file_the_compose_file_names_exists():
    model = _compose_model()
    missing = []
    for name, service in model["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")) and not source.startswith("/var/run/docker.sock"):
                if not (STACK / source).exists():
                    missing.append(f"{name}: {source}")
        build = service.get("build")
        if build:
            context = STACK / build["context"]
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            if not dockerfile.is_file():
                missing.append(f"{name}: {dockerfile}")
            missing += [f"{name}: {p}" for p in _dockerfile_sources(dockerfile, context) if not p.exists()]
    for dockerfile in STACK.glob("*/Dockerfile"):
        context = ROOT if dockerfile.parent.name == "hub" else dockerfile.parent
        missing += [str(p) for p in _dockerfile_sources(dockerfile, context) if not p.exists()]
    assert not missing, missing


def _dockerfile_sources(dockerfile: Path, context: Path) -> list[Path]:
    sources = []
    for line in dockerfile.read_text().splitlines():
        parts = line.split()
        if parts[:1] in (["COPY"], ["ADD"]) and not any(p.startswith("--from") for p in parts):
            sources += [context / p for p in parts[1:-1] if not p.startswith("--")]
    return sources


def test_scripts_the_compose_file_runs_are_in_their_mounts():
    model = _compose_model()
    for name in ("consul-tls-init", "consul-acl-init"):
        script = model["services"][name]["entrypoint"][-1]
        assert script.startswith("/stack/consul/")
        assert (STACK / "consul" / Path(script).name).is_file()
    key_init = model["services"]["hub-jwt-key-init"]
    assert key_init["entrypoint"][-1] == "/stack/hub/jwt-key-init.py"
    assert f"./hub/jwt-key-init.py:{key_init['entrypoint'][-1]}:ro" in key_init["volumes"]
    assert "IDENTITY_DIR=/stack/consul/identity" in (STACK / "consul" / "acl-init.sh").read_text()
    for name in ("trino-coordinator", "trino-worker"):
        model_ips = model["services"][name]["networks"]["mesh"]["ipv4_address"]
        assert load(STACK / "consul" / "services" / f"{name}.hcl")["service"]["address"] == model_ips


# -- Consul files --------------------------------------------------------------------------------------------

# Top-level keys of an agent config file, from agent/config/config.go (struct Config) in
# hashicorp/consul; only those the stack uses, each checked there.
AGENT_KEYS = {
    "datacenter",
    "data_dir",
    "node_name",
    "server",
    "bootstrap_expect",
    "client_addr",
    "bind_addr",
    "retry_join",
    "ui_config",
    "ports",
    "connect",
    "acl",
    "tls",
    "encrypt",
}
# Sub-keys, from the same file: structs ACL, Ports, Connect, RawUIConfig.
ACL_KEYS = {
    "enabled",
    "enable_token_replication",
    "policy_ttl",
    "role_ttl",
    "token_ttl",
    "down_policy",
    "default_policy",
    "enable_key_list_policy",
    "tokens",
    "enable_token_persistence",
}
PORTS_KEYS = {
    "dns",
    "http",
    "https",
    "serf_lan",
    "serf_wan",
    "server",
    "grpc",
    "grpc_tls",
    "proxy_min_port",
    "proxy_max_port",
    "sidecar_min_port",
    "sidecar_max_port",
    "expose_min_port",
    "expose_max_port",
}
CONNECT_KEYS = {"enabled", "ca_provider", "ca_config", "enable_mesh_gateway_wan_federation"}
TLS_PROTOCOL_KEYS = {
    "ca_file",
    "ca_path",
    "cert_file",
    "key_file",
    "tls_min_version",
    "tls_cipher_suites",
    "verify_incoming",
    "verify_outgoing",
    "verify_server_hostname",
    "use_auto_cert",
}


@pytest.mark.parametrize("name", ["server", "client"])
def test_agent_config_has_acls_tls_and_connect(name):
    config = load(STACK / "consul" / f"{name}.hcl")
    assert set(config) <= AGENT_KEYS, set(config) - AGENT_KEYS
    assert config["datacenter"] and config["data_dir"] and config["retry_join"]
    assert config["server"] is (name == "server")
    if name == "server":
        assert config["bootstrap_expect"] >= 1
    assert set(config["acl"]) <= ACL_KEYS and set(config["ports"]) <= PORTS_KEYS
    assert set(config["connect"]) <= CONNECT_KEYS
    acl = config["acl"]
    assert acl["enabled"] is True and acl["default_policy"] == "deny"
    assert config["connect"]["enabled"] is True
    assert config["ports"]["http"] == -1 and config["ports"]["https"] == 8501 and config["ports"]["grpc_tls"] == 8503
    tls = config["tls"]
    assert set(tls) <= {"defaults", "internal_rpc", "https", "grpc"}
    for section in tls.values():
        assert set(section) <= TLS_PROTOCOL_KEYS, set(section) - TLS_PROTOCOL_KEYS
    defaults = tls["defaults"]
    assert defaults["verify_incoming"] and defaults["verify_outgoing"]
    assert tls["internal_rpc"]["verify_server_hostname"] is True
    for key in ("ca_file", "cert_file", "key_file"):
        # made by tls-init.sh under these names (consul tls ca/cert create)
        assert Path(defaults[key]).name in (STACK / "consul" / "tls-init.sh").read_text()


def test_tls_init_names_match_consul_tls_cert_create():
    script = (STACK / "consul" / "tls-init.sh").read_text()
    for name in ("consul-agent-ca.pem", "dc1-server-consul-0.pem", "dc1-client-consul-0-key.pem"):
        assert name in script


@pytest.mark.parametrize("path", sorted((STACK / "consul" / "config-entries").glob("*.hcl")), ids=lambda p: p.name)
def test_config_entries(path):
    entry = load(path)
    assert entry["Kind"] in ("service-defaults", "service-intentions")
    assert entry["Name"]
    if entry["Kind"] == "service-defaults":
        assert entry["Protocol"] in ("tcp", "http", "http2", "grpc")
    else:
        assert entry["Sources"]
        for source in entry["Sources"]:
            assert set(source) <= {
                "Name",
                "Action",
                "Description",
                "Permissions",
                "Type",
                "Peer",
                "Partition",
                "Namespace",
                "SamenessGroup",
                "Precedence",
                "LegacyID",
                "LegacyMeta",
            }
            assert source["Name"]
            assert ("Action" in source) != ("Permissions" in source), "a source is L4 or L7, never both"
            assert source.get("Action", "allow") in ("allow", "deny")


def test_trino_coordinator_is_http_and_the_orchestrator_may_call_it():
    entries = [load(p) for p in (STACK / "consul" / "config-entries").glob("*.hcl")]
    defaults = [e for e in entries if e["Kind"] == "service-defaults" and e["Name"] == "trino-coordinator"]
    assert defaults and defaults[0]["Protocol"] == "http"
    intentions = [e for e in entries if e["Kind"] == "service-intentions" and e["Name"] == "trino-coordinator"]
    assert {"Name": "orchestrator", "Action": "allow"}.items() <= intentions[0]["Sources"][0].items()


@pytest.mark.parametrize("name", ["trino-coordinator", "trino-worker"])
def test_service_definitions(name):
    service = load(STACK / "consul" / "services" / f"{name}.hcl")["service"]
    assert service["name"] == name and service["id"] and isinstance(service["port"], int)
    proxy = service["connect"]["sidecar_service"]["proxy"]
    upstreams = proxy["upstreams"] if isinstance(proxy["upstreams"], list) else [proxy["upstreams"]]
    for upstream in upstreams:
        assert upstream["destination_name"] and upstream["local_bind_port"]
    check = service["check"]
    assert check["http"] and check["interval"]


@pytest.mark.parametrize("name", ["hub", "janitor"])
def test_policies_parse_and_are_what_acl_init_uses(name):
    policy = load(ROOT / "docker" / "consul" / f"{name}-policy.hcl")
    assert set(policy) <= {
        "acl",
        "service",
        "service_prefix",
        "node",
        "node_prefix",
        "key_prefix",
        "operator",
        "agent",
        "agent_prefix",
        "query_prefix",
        "session_prefix",
        "event_prefix",
        "keyring",
        "mesh",
        "peering",
        "key",
    }
    assert policy["service"]["trino-coordinator"]["intentions"] == "write"
    assert "write" not in str(policy.get("operator", "")) and "mesh" not in policy
    assert f"{name}-policy.hcl" in (STACK / "consul" / "acl-init.sh").read_text()


def test_acl_init_writes_each_token_for_its_consumer_only():
    script = (STACK / "consul" / "acl-init.sh").read_text()
    assert "chmod 0600" in script and "umask 077" in script
    model = _compose_model()["services"]
    mounts = {name: " ".join(s.get("volumes", [])) for name, s in model.items()}
    for volume, consumers in {
        "hub-secrets": {"hub", "consul-tls-init", "consul-acl-init"},
        "janitor-secrets": {"janitor", "consul-tls-init", "consul-acl-init"},
        "consul-mgmt": {"consul-acl-init"},
        "consul-ca": {"consul-tls-init"},
        # The JWT signing key: made by its one-shot, read by the hub; never by acl-init, which
        # gets the public keys from their own volume.
        "hub-jwt-key": {"hub-jwt-key-init", "hub"},
        "hub-jwt-pub": {"hub-jwt-key-init", "consul-acl-init"},
    }.items():
        assert {name for name, m in mounts.items() if f"{volume}:" in m} == consumers, volume
    assert "--token-file" in model["janitor"]["command"]
    assert model["hub"]["environment"]["CONSUL_HTTP_TOKEN_FILE"].startswith("/run/secrets/consul/")


# -- the sidecar image -----------------------------------------------------------------------------------


def test_sidecar_admin_interface_is_a_unix_socket_and_ready_asks_it():
    entry = (STACK / "envoy-sidecar" / "consul-envoy-sidecar").read_text()
    ready = (STACK / "envoy-sidecar" / "sidecar-ready").read_text()
    assert "consul connect envoy -bootstrap" in entry
    assert '"pipe"' in entry and "envoy-admin.sock" in entry
    assert "--unix-socket" in ready and "/ready" in ready
    dockerfile = (STACK / "envoy-sidecar" / "Dockerfile").read_text()
    assert "FROM hashicorp/consul:" in dockerfile and "FROM envoyproxy/envoy:" in dockerfile
    assert "ENTRYPOINT []" in dockerfile and "USER 101" in dockerfile


# -- jupyterhub_config.py -------------------------------------------------------------------------------


def test_stack_jupyterhub_config_loads_into_a_working_spawner(monkeypatch):
    from jupyterhub.app import JupyterHub
    from jupyterhub.objects import Hub
    from traitlets.config.loader import PyFileConfigLoader

    from consulspawner import ConsulSpawner

    for key in (
        "CONSUL_HTTP_ADDR",
        "CONSUL_CACERT",
        "CONSUL_HTTP_TOKEN_FILE",
        "CONSULSPAWNER_NETWORK",
        "CONSULSPAWNER_SIDECAR_IMAGE",
        "CONSULSPAWNER_NOTEBOOK_IMAGE",
    ):
        monkeypatch.delenv(key, raising=False)
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(STACK)).load_config()

    hub = JupyterHub(config=config)
    assert hub.spawner_class is ConsulSpawner  # "consul", through the jupyterhub.spawners entry point
    assert hub.cleanup_servers is False
    assert [s["name"] for s in hub.services] == ["idle-culler"]
    assert "jupyterhub_idle_culler" in hub.services[0]["command"]

    from types import SimpleNamespace

    user = SimpleNamespace(name="alice", url="/user/alice/", escaped_name="alice", id=1, settings={})
    spawner = ConsulSpawner(
        user=user, hub=Hub(), config=config, api_token="x" * 32, oauth_client_id="jupyterhub-user-alice"
    )
    assert spawner.consul_address == "https://consul-client:8501"
    assert spawner.consul_ca_file == "/run/secrets/consul/ca.pem"
    assert spawner.consul_token_file == "/run/secrets/consul/token"
    assert spawner.consul_token == ""  # the secret is only ever in the file
    assert spawner.network_name == "consulspawner-mesh"
    assert spawner.intention_mode == "L7"
    assert spawner.upstreams == [{"destination_name": "trino-coordinator", "local_bind_port": 28080}]
    assert spawner.sidecar_ready_command == ["sidecar-ready"]
    assert spawner.sidecar_command[0] == "consul-envoy-sidecar"
    assert spawner.sidecar_env == {"CONSUL_GRPC_ADDR": "https://consul-client:8503"}
    assert spawner.sidecar_file_owner == "101:101"
    assert spawner.sidecar_image.startswith("consulspawner/envoy-sidecar:")
    # The plan builds: the sidecar command gets this server's IDs and the token file.
    plan = spawner.mesh_settings()
    assert plan.intention_mode == "L7" and plan.upstreams[0].local_bind_port == 28080
    model = _compose_model()
    assert model["networks"]["mesh"]["name"] == spawner.network_name
    # The hub's image variable in compose.yaml defaults to the same sidecar image.
    assert model["services"]["hub"]["environment"]["CONSULSPAWNER_SIDECAR_IMAGE"].endswith(
        f":-{spawner.sidecar_image}}}"
    )


# -- identity by login (issue 16): the hub's signing key, the auth method, the binding rule -----------

IDENTITY = STACK / "consul" / "identity"
KEY_INIT = STACK / "hub" / "jwt-key-init.py"
IDENTITY_INIT = STACK / "consul" / "identity-init.sh"
# What the stack's files name: jupyterhub_config.py's hub_instance, the default service prefix
# (naming.DEFAULT_TEMPLATE "jupyter-{slug}"), the audience and a day's MaxTokenTTL.
HUB_INSTANCE = "jupyterhub"
AUTH_METHOD = f"consulspawner-{HUB_INSTANCE}"
AUDIENCE = "consul"
TOKEN_LIFETIME = 24 * 3600


def expected_auth_method(public_pems: list[str]) -> dict:
    from consulspawner import identity

    method = identity.auth_method(
        AUTH_METHOD, hub_instance=HUB_INSTANCE, audience=AUDIENCE, public_pem="-", token_lifetime=TOKEN_LIFETIME
    )
    method["Config"]["JWTValidationPubKeys"] = public_pems
    return method


def expected_binding_rule() -> dict:
    from consulspawner import identity

    return identity.binding_rule(AUTH_METHOD, hub_instance=HUB_INSTANCE, prefix="jupyter-")


def test_identity_files_are_what_consulspawner_identity_makes():
    import json

    assert json.loads((IDENTITY / "auth-method.json").read_text()) == expected_auth_method([])
    assert json.loads((IDENTITY / "binding-rule.json").read_text()) == expected_binding_rule()


def _key_init(*args: str, key_dir: Path, pub_dir: Path) -> subprocess.CompletedProcess:
    import sys

    return subprocess.run(
        [sys.executable, str(KEY_INIT), *args, "--key-dir", str(key_dir), "--pub-dir", str(pub_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "HUB_UID": str(os.getuid())},
    )


@pytest.fixture
def key_dirs(tmp_path):
    key_dir, pub_dir = tmp_path / "hub-jwt", tmp_path / "hub-jwt-pub"
    key_dir.mkdir()
    pub_dir.mkdir()
    return key_dir, pub_dir


def test_jwt_key_init_makes_a_0600_key_once_and_publishes_its_public_half(key_dirs):
    import stat

    from consulspawner.identity import Signer

    key_dir, pub_dir = key_dirs
    result = _key_init(key_dir=key_dir, pub_dir=pub_dir)
    assert result.returncode == 0, result.stderr
    key = key_dir / "key.pem"
    info = key.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    signer = Signer.from_file(str(key))  # the hub's own loader accepts it
    assert signer.algorithm == "ES256"
    pubs = list(pub_dir.iterdir())
    assert [p.name for p in pubs] == [f"{signer.key_id}.pem"]
    assert pubs[0].read_text() == signer.public_pem()
    assert stat.S_IMODE(pubs[0].stat().st_mode) == 0o644
    assert "PRIVATE" not in result.stdout + result.stderr

    pem = key.read_bytes()
    again = _key_init("init", key_dir=key_dir, pub_dir=pub_dir)
    assert again.returncode == 0, again.stderr
    assert key.read_bytes() == pem and len(list(pub_dir.iterdir())) == 1


def test_jwt_key_init_refuses_a_key_others_could_read(key_dirs):
    key_dir, pub_dir = key_dirs
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    (key_dir / "key.pem").chmod(0o640)
    result = _key_init(key_dir=key_dir, pub_dir=pub_dir)
    assert result.returncode == 1
    assert "readable by others" in result.stderr and "PRIVATE" not in result.stdout + result.stderr


@pytest.mark.skipif(not hasattr(os, "getuid") or os.getuid() != 0, reason="giving a file to another uid needs root")
def test_jwt_key_init_gives_the_key_to_the_hubs_uid(key_dirs):
    import stat

    key_dir, pub_dir = key_dirs
    hub_uid = 10001  # a site whose hub does not run as root

    def run(owner: int) -> subprocess.CompletedProcess:
        return _key_init("--owner", str(owner), key_dir=key_dir, pub_dir=pub_dir)

    assert run(hub_uid).returncode == 0
    info = (key_dir / "key.pem").stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (hub_uid, 0o600)
    assert key_dir.stat().st_uid == hub_uid and stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    refused = run(4242)  # the same key for another uid: refused, not silently re-owned
    assert refused.returncode == 1 and "not the hub's uid 4242" in refused.stderr
    assert key_dir.stat().st_uid == hub_uid  # and nothing was changed before refusing


def test_jwt_key_rotation_stage_switch_retire(key_dirs):
    from consulspawner.identity import Signer

    key_dir, pub_dir = key_dirs
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    old = Signer.from_file(str(key_dir / "key.pem")).key_id
    assert _key_init("switch", key_dir=key_dir, pub_dir=pub_dir).returncode == 1  # nothing staged

    assert _key_init("stage", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    new = Signer.from_file(str(key_dir / "key-next.pem")).key_id
    assert Signer.from_file(str(key_dir / "key.pem")).key_id == old  # still signing with the old one
    assert sorted(p.name for p in pub_dir.iterdir()) == sorted([f"{old}.pem", f"{new}.pem"])

    assert _key_init("switch", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert Signer.from_file(str(key_dir / "key.pem")).key_id == new
    assert not (key_dir / "key-next.pem").exists()
    assert len(list(pub_dir.iterdir())) == 2  # the old key stays accepted until retired

    assert _key_init("retire", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert [p.name for p in pub_dir.iterdir()] == [f"{new}.pem"]


# A stand-in for the `consul` CLI, for identity-init.sh only: each subcommand accepts exactly the
# flags hashicorp/consul declares for it (command/acl/authmethod/{create,update,list}/*.go,
# command/acl/bindingrule/{create,list,delete}/*.go, plus command/flags/http.go's), requires the
# same flags, refuses a call without a token, and keeps auth methods and binding rules in a JSON
# file. Binding rules may be created twice, as in Consul (each gets a new ID).
FAKE_CONSUL_CLI = r"""
import json, os, re, sys, uuid
from cryptography.hazmat.primitives import serialization

HTTP = {"http-addr", "token", "token-file", "ca-file", "ca-path", "client-cert", "client-key",
        "tls-server-name", "datacenter", "namespace", "partition"}
HTTP_BOOL = {"stale"}
K8S = {"kubernetes-host", "kubernetes-ca-cert", "kubernetes-service-account-jwt"}
COMMANDS = {
    ("auth-method", "create"): ({"type", "name", "display-name", "description", "max-token-ttl",
                                 "token-locality", "config", "format", "token-name-format"} | K8S, {"meta"}),
    ("auth-method", "update"): ({"name", "display-name", "description", "max-token-ttl", "token-locality",
                                 "config", "format"} | K8S, {"meta", "no-merge"}),
    ("auth-method", "list"): ({"format"}, {"meta"}),
    ("binding-rule", "create"): ({"method", "description", "selector", "bind-type", "bind-name", "format"}, {"meta"}),
    ("binding-rule", "list"): ({"method", "format"}, {"meta"}),
    ("binding-rule", "delete"): ({"id"}, set()),
}
DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$")

def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)

args = sys.argv[1:]
with open(os.environ["FAKE_CONSUL_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[:1] != ["acl"] or tuple(args[1:3]) not in COMMANDS:
    fail(f"fake consul: not modelled: {args[:3]}")
strings, bools = COMMANDS[tuple(args[1:3])]
strings, bools = strings | HTTP, bools | HTTP_BOOL
flags, rest = {}, args[3:]
while rest and rest[0].startswith("-"):
    name, _, value = rest.pop(0).lstrip("-").partition("=")
    if name in bools:
        flags[name] = value != "false"
    elif name in strings:
        if not _ and not rest:
            fail(f"flag needs an argument: -{name}")
        flags[name] = value if _ else rest.pop(0)
    else:
        fail(f"flag provided but not defined: -{name}")
if rest:
    fail(f"Too many arguments: {rest}")
token_file = flags.get("token-file") or os.environ.get("CONSUL_HTTP_TOKEN_FILE", "")
if not (flags.get("token") or (token_file and open(token_file).read().strip())):
    fail("Unexpected response code: 403 (Permission denied: anonymous token lacks permission 'acl:write')")
if flags.get("format", "json") != "json":
    fail("fake consul: only -format=json is modelled")

state_path = os.environ["FAKE_CONSUL_STATE"]
state = json.load(open(state_path)) if os.path.exists(state_path) else {"methods": {}, "rules": []}

def load_config(value):
    if not value.startswith("@"):
        fail("fake consul: only -config @file is modelled")
    config = json.load(open(value[1:]))
    for pem in config.get("JWTValidationPubKeys", []):  # Consul parses each (oidcauth config)
        try:
            serialization.load_pem_public_key(pem.encode())
        except ValueError:
            fail("Unexpected response code: 500 (error parsing public key JWTValidationPubKeys)")
    return config

def method_from_flags(kind):
    ttl = flags.get("max-token-ttl", "")
    if ttl and not DURATION.match(ttl):
        fail(f'invalid value "{ttl}" for flag -max-token-ttl: parse error')
    if flags.get("token-locality", "") not in ("", "local", "global"):
        fail("Unexpected response code: 500 (Invalid TokenLocality)")
    method = {"Name": flags["name"], "Type": kind, "DisplayName": flags.get("display-name", ""),
              "Description": flags.get("description", ""), "TokenLocality": flags.get("token-locality", "")}
    if ttl:
        method["MaxTokenTTL"] = ttl
    method["Config"] = load_config(flags["config"]) if "config" in flags else {}
    return method

group, verb = args[1], args[2]
if group == "auth-method" and verb == "create":
    if not flags.get("type"):
        fail("Missing required '-type' flag")
    if not flags.get("name"):
        fail("Missing required '-name' flag")
    if flags["name"] in state["methods"]:  # stricter than Consul (which updates): creating twice is a bug
        fail("fake consul: auth method exists")
    state["methods"][flags["name"]] = method_from_flags(flags["type"])
elif group == "auth-method" and verb == "update":
    if not flags.get("name"):
        fail("Cannot update an auth method without specifying the -name parameter")
    current = state["methods"].get(flags["name"])
    if current is None:
        fail(f'Auth method not found with name "{flags["name"]}"')
    if not flags.get("no-merge"):
        fail("fake consul: only -no-merge updates are modelled")
    state["methods"][flags["name"]] = method_from_flags(current["Type"])
elif group == "auth-method" and verb == "list":
    print(json.dumps([{k: m[k] for k in ("Name", "Type", "DisplayName", "Description")}
                      for m in state["methods"].values()] or None))
elif group == "binding-rule" and verb == "create":
    for required in ("method", "bind-name"):
        if not flags.get(required):
            fail(f"Missing required '-{required}' flag")
    if flags["method"] not in state["methods"]:
        fail(f'Unexpected response code: 400 (cannot find auth method with name "{flags["method"]}")')
    if flags.get("bind-type", "service") not in ("service", "node", "role", "templated-policy"):
        fail("Unexpected response code: 400 (Invalid Binding Rule: unknown BindType)")
    state["rules"].append({"ID": str(uuid.uuid4()), "AuthMethod": flags["method"],
                           "Description": flags.get("description", ""), "Selector": flags.get("selector", ""),
                           "BindType": flags.get("bind-type", "service"), "BindName": flags["bind-name"]})
elif group == "binding-rule" and verb == "list":
    rules = [r for r in state["rules"] if not flags.get("method") or r["AuthMethod"] == flags["method"]]
    print(json.dumps(rules or None))
elif group == "binding-rule" and verb == "delete":
    if not flags.get("id"):
        fail("Must specify the -id parameter")
    matches = [r for r in state["rules"] if r["ID"].startswith(flags["id"])]
    if len(matches) != 1:
        fail("Error determining binding rule ID")
    state["rules"].remove(matches[0])
json.dump(state, open(state_path, "w"))
"""


@pytest.fixture
def fake_consul(tmp_path):
    import json
    import sys

    if not shutil.which("jq"):
        pytest.fail("identity-init.sh needs jq (in the consul image; here: apt-get install -y jq)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    cli = bin_dir / "consul"
    cli.write_text(f"#!{sys.executable}\n{FAKE_CONSUL_CLI}")
    cli.chmod(0o755)
    token = tmp_path / "mgmt-token"
    token.write_text("management-secret\n")
    token.chmod(0o600)
    state, log = tmp_path / "consul-state.json", tmp_path / "consul-calls.jsonl"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_CONSUL_STATE": str(state),
        "FAKE_CONSUL_LOG": str(log),
        "CONSUL_HTTP_TOKEN_FILE": str(token),
    }

    class Fake:
        def run(self, pub_dir: Path) -> subprocess.CompletedProcess:
            log.write_text("")
            return subprocess.run(
                ["sh", str(IDENTITY_INIT)],
                capture_output=True,
                text=True,
                env={**env, "IDENTITY_DIR": str(IDENTITY), "JWT_PUB_DIR": str(pub_dir)},
            )

        def state(self) -> dict:
            return json.loads(state.read_text())

        def calls(self) -> list[list[str]]:
            return [json.loads(line) for line in log.read_text().splitlines()]

        def without_token(self) -> None:
            env.pop("CONSUL_HTTP_TOKEN_FILE")

    return Fake()


def _public_pems(pub_dir: Path) -> list[str]:
    return [p.read_text() for p in sorted(pub_dir.glob("*.pem"))]


def test_identity_init_creates_the_auth_method_and_the_rule_identity_py_describes(key_dirs, fake_consul):
    key_dir, pub_dir = key_dirs
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    result = fake_consul.run(pub_dir)
    assert result.returncode == 0, result.stderr
    state = fake_consul.state()
    assert state["methods"] == {AUTH_METHOD: expected_auth_method(_public_pems(pub_dir))}
    assert [{k: v for k, v in r.items() if k != "ID"} for r in state["rules"]] == [expected_binding_rule()]
    # The private key never reaches Consul's side, not even a command line.
    assert "PRIVATE" not in json_dumps(fake_consul.calls()) + json_dumps(state)


def json_dumps(value) -> str:
    import json

    return json.dumps(value)


def test_identity_init_is_idempotent_and_follows_key_rotation(key_dirs, fake_consul):
    key_dir, pub_dir = key_dirs
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert fake_consul.run(pub_dir).returncode == 0
    first = fake_consul.state()

    again = fake_consul.run(pub_dir)
    assert again.returncode == 0, again.stderr
    assert fake_consul.state() == first  # same method, the same one rule (same ID)
    verbs = [call[1:3] for call in fake_consul.calls()]
    assert ["auth-method", "update"] in verbs and ["binding-rule", "create"] not in verbs

    # Rotation: Consul accepts both keys while the hub switches, then only the new one.
    assert _key_init("stage", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert fake_consul.run(pub_dir).returncode == 0
    assert len(fake_consul.state()["methods"][AUTH_METHOD]["Config"]["JWTValidationPubKeys"]) == 2
    assert _key_init("switch", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert _key_init("retire", key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert fake_consul.run(pub_dir).returncode == 0
    assert fake_consul.state()["methods"][AUTH_METHOD] == expected_auth_method(_public_pems(pub_dir))
    assert fake_consul.state()["rules"] == first["rules"]


def test_identity_init_replaces_a_stale_binding_rule(key_dirs, fake_consul, tmp_path):
    import json

    key_dir, pub_dir = key_dirs
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    assert fake_consul.run(pub_dir).returncode == 0
    state = fake_consul.state()
    state["rules"][0]["BindName"] = "${value.service_suffix}"  # an old rule without the fixed prefix
    (tmp_path / "consul-state.json").write_text(json.dumps(state))
    result = fake_consul.run(pub_dir)
    assert result.returncode == 0, result.stderr
    rules = fake_consul.state()["rules"]
    assert [{k: v for k, v in r.items() if k != "ID"} for r in rules] == [expected_binding_rule()]
    assert "stale binding rule" in result.stdout


def test_identity_init_fails_without_a_public_key_or_a_token(key_dirs, fake_consul):
    key_dir, pub_dir = key_dirs
    result = fake_consul.run(pub_dir)
    assert result.returncode != 0 and "no public key" in result.stderr
    assert _key_init(key_dir=key_dir, pub_dir=pub_dir).returncode == 0
    fake_consul.without_token()
    result = fake_consul.run(pub_dir)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert fake_consul.calls() == [["acl", "auth-method", "list", "-format=json"]]


def test_the_signing_key_reaches_the_hub_read_only_where_its_config_looks():
    from traitlets.config.loader import PyFileConfigLoader

    services = _compose_model()["services"]
    init, hub, acl_init = services["hub-jwt-key-init"], services["hub"], services["consul-acl-init"]
    key_mount = next(v for v in init["volumes"] if v.startswith("hub-jwt-key:"))
    pub_mount = next(v for v in init["volumes"] if v.startswith("hub-jwt-pub:"))
    assert key_mount.split(":")[1] == init["environment"]["KEY_DIR"]
    assert pub_mount.split(":")[1] == init["environment"]["PUB_DIR"]
    # The key belongs to the uid the hub runs as (compose default: the image's, root).
    assert init["environment"]["HUB_UID"] == str(hub.get("user", "0")).split(":")[0]
    assert init.get("network_mode") == "none"

    hub_key = next(v for v in hub["volumes"] if v.startswith("hub-jwt-key:"))
    _, target, mode = hub_key.split(":")
    assert mode == "ro"
    config = PyFileConfigLoader("jupyterhub_config.py", path=str(STACK)).load_config()
    assert config.ConsulSpawner.jwt_signing_key_file == f"{target}/key.pem"
    assert config.ConsulSpawner.auth_method == AUTH_METHOD
    assert config.ConsulSpawner.hub_instance == HUB_INSTANCE
    assert "--hub-instance" in services["janitor"]["command"]
    assert services["janitor"]["command"][services["janitor"]["command"].index("--hub-instance") + 1] == HUB_INSTANCE

    pub_target = next(v for v in acl_init["volumes"] if v.startswith("hub-jwt-pub:")).split(":")
    assert pub_target[1:] == ["/consul/hub-jwt-pub", "ro"]
    assert acl_init["depends_on"]["hub-jwt-key-init"] == {"condition": "service_completed_successfully"}


def test_only_acl_init_holds_acl_write_in_the_stack():
    """The management token is the only acl:write the stack has: it lives in a volume only
    consul-acl-init mounts (test above), and every policy acl-init creates is read from
    docker/consul/*-policy.hcl, none inline; no process of ours is linked to a built-in policy."""
    scripts = {p.name: p.read_text() for p in (STACK / "consul").glob("*.sh")}
    for name, text in scripts.items():
        assert "global-management" not in text, name
        assert "00000000-0000-0000-0000-000000000001" not in text, name  # its ID
        for line in text.splitlines():
            if "acl policy create" in line or "acl policy update" in line:
                assert "-rules" not in line or '"@/consul/policies/' in line, line
    assert '-rules "@/consul/policies/$name-policy.hcl"' in scripts["acl-init.sh"]
    # The hub's servers get their tokens by login, never from a token the hub creates.
    config = (STACK / "jupyterhub_config.py").read_text()
    assert "c.ConsulSpawner.auth_method" in config and "c.ConsulSpawner.jwt_signing_key_file" in config


def test_no_policy_file_grants_acl_write():
    """acl = "write" is management-equivalent in Consul (issue 16): no HCL file under docker/
    may grant it; the stack's only acl:write is the bootstrap management token of acl-init."""
    granting = [
        str(p.relative_to(ROOT)) for p in sorted((ROOT / "docker").rglob("*.hcl")) if load(p).get("acl") == "write"
    ]
    assert not granting, f"management-equivalent acl = write in {granting}"
