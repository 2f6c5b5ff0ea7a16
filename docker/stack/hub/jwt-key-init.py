"""The hub's JWT signing key: made once, kept 0600 for the hub's uid, its public half published.

Run by compose's one-shot ``hub-jwt-key-init`` (the hub image: Python and ``cryptography``,
and consulspawner's own key loader, so a key this makes is one the hub accepts). Two volumes:

    KEY_DIR  (hub-jwt-key)  key.pem [, key-next.pem]  0600, owner HUB_UID; dir 0700.
                            Mounted only here and, read-only, into the hub.
    PUB_DIR  (hub-jwt-pub)  <key id>.pem, one per key Consul accepts, 0644.
                            Mounted here and, read-only, into consul-acl-init, which puts every
                            file into the auth method's JWTValidationPubKeys.

Commands (see docker/stack/README.md, "Rotating the signing key"):

    init     (default) make key.pem unless it exists; publish its public key
    stage    make key-next.pem and publish its public key (Consul accepts both after acl-init)
    switch   key-next.pem becomes key.pem (restart the hub afterwards)
    retire   unpublish every public key that is neither key.pem's nor key-next.pem's

Never prints a private key; a key id is a fingerprint of the public key.
"""

from __future__ import annotations

import argparse
import os
import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consulspawner.identity import Signer, SigningKeyError

KEY = "key.pem"
NEXT = "key-next.pem"


def say(message: str) -> None:
    print(f"hub-jwt-key-init: {message}", flush=True)


def make_key(path: str, owner: int) -> Signer:
    """A new EC P-256 key at ``path``: created 0600 with O_EXCL (never readable by others, not
    even for an instant), then given to ``owner``."""
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
        if os.fstat(fd).st_uid != owner:
            os.fchown(fd, owner, owner)
    finally:
        os.close(fd)
    return Signer.from_file(path)


def load_key(path: str, owner: int) -> Signer:
    """An existing key, held to the rules the hub holds it to (consulspawner.identity.Signer):
    a key that others could read may have leaked, so it is refused, not repaired."""
    signer = Signer.from_file(path)
    info = os.stat(path)
    if info.st_uid != owner:
        raise SigningKeyError(f"{path} belongs to uid {info.st_uid}, not the hub's uid {owner}")
    return signer


def publish(signer: Signer, pub_dir: str) -> str:
    """Write the public key as ``<key id>.pem`` (0644), unless it is there."""
    path = os.path.join(pub_dir, f"{signer.key_id}.pem")
    if not os.path.exists(path):
        tmp = path + ".new"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(signer.public_pem())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        say(f"published public key {signer.key_id}")
    return path


def published_ids(pub_dir: str) -> list[str]:
    return sorted(name[: -len(".pem")] for name in os.listdir(pub_dir) if name.endswith(".pem"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The hub's JWT signing key and its published public half.")
    parser.add_argument("command", nargs="?", default="init", choices=["init", "stage", "switch", "retire"])
    parser.add_argument("--key-dir", default=os.environ.get("KEY_DIR", "/secrets/hub-jwt"))
    parser.add_argument("--pub-dir", default=os.environ.get("PUB_DIR", "/secrets/hub-jwt-pub"))
    parser.add_argument("--owner", type=int, default=int(os.environ.get("HUB_UID", "0")))
    args = parser.parse_args(argv)
    os.umask(0o077)
    key, nxt = os.path.join(args.key_dir, KEY), os.path.join(args.key_dir, NEXT)
    try:
        # Keys that exist are checked before anything is changed.
        for path in (key, nxt):
            if os.path.exists(path):
                load_key(path, args.owner)
        # The volume roots: only the hub lists the key directory; anyone may read the public one.
        if os.stat(args.key_dir).st_uid != args.owner:
            os.chown(args.key_dir, args.owner, args.owner)
        os.chmod(args.key_dir, 0o700)
        os.chmod(args.pub_dir, 0o755)
        if args.command == "init":
            if os.path.exists(key):
                signer = load_key(key, args.owner)
            else:
                signer = make_key(key, args.owner)
                say(f"made signing key {signer.key_id} ({KEY}, 0600, uid {args.owner})")
            publish(signer, args.pub_dir)
            if os.path.exists(nxt):
                publish(load_key(nxt, args.owner), args.pub_dir)
            say(f"signing key {signer.key_id}; public keys published: {', '.join(published_ids(args.pub_dir))}")
        elif args.command == "stage":
            staged = load_key(nxt, args.owner) if os.path.exists(nxt) else make_key(nxt, args.owner)
            publish(staged, args.pub_dir)
            say(f"staged key {staged.key_id} ({NEXT}); run consul-acl-init, then `switch`")
        elif args.command == "switch":
            if not os.path.exists(nxt):
                raise SigningKeyError(f"no {NEXT} to switch to: run `stage` (and consul-acl-init) first")
            staged = load_key(nxt, args.owner)
            publish(staged, args.pub_dir)  # never sign with a key Consul was not told about
            os.replace(nxt, key)
            say(f"signing key is now {staged.key_id}; restart the hub, then `retire` and consul-acl-init")
        else:
            keep = {load_key(p, args.owner).key_id for p in (key, nxt) if os.path.exists(p)}
            if not keep:
                raise SigningKeyError(f"no {KEY} in {args.key_dir}: refusing to unpublish every public key")
            for key_id in published_ids(args.pub_dir):
                if key_id not in keep:
                    os.unlink(os.path.join(args.pub_dir, f"{key_id}.pem"))
                    say(f"unpublished public key {key_id}; run consul-acl-init to drop it from Consul")
    except SigningKeyError as e:
        print(f"hub-jwt-key-init: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
