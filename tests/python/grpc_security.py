#!/usr/bin/env python3
"""Tessera's security as a Python gRPC user meets it (grpcio, stubs generated
from proto/ at run time with grpc_tools, exactly as a user would).

Run by tests/tests/python_clients.rs against a real cluster and router:

    grpc_security.py --router HOST:PORT --ca ca.pem --admin-key-file admin.key --proto proto/proto

Checks, each an assertion (exit 1 with the first failure):
  * a plaintext channel to the TLS client port fails;
  * a keyless search is UNAUTHENTICATED; a malformed key is UNAUTHENTICATED;
  * a key of another tenant, and a write-only key, are PERMISSION_DENIED,
    with the same message for an existing and a missing tenant;
  * the write key writes, the search key finds the page;
  * a revoked key is UNAUTHENTICATED once the router's map has the revocation.
Prints one JSON line of what it saw.
"""

import argparse
import importlib
import json
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def stubs(proto_dir):
    out = tempfile.mkdtemp(prefix="tessera-py-stubs-")
    files = ["tessera.proto", "router.proto", "features.proto"]
    code = protoc.main(
        ["grpc_tools.protoc", f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}"]
        + [f"{proto_dir}/{f}" for f in files]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    return importlib.import_module("tessera_pb2"), importlib.import_module("router_pb2"), importlib.import_module(
        "router_pb2_grpc"
    )


class Failure(Exception):
    pass


def expect_code(what, fn, code):
    try:
        fn()
    except grpc.RpcError as e:
        if e.code() != code:
            raise Failure(f"{what}: expected {code.name}, got {e.code().name}: {e.details()}")
        return e.details()
    raise Failure(f"{what}: expected {code.name}, but the call succeeded")


def meta(key):
    return [("authorization", f"Bearer {key}")]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--router", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--admin-key-file", required=True)
    ap.add_argument("--proto", required=True)
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a write or revocation to show")
    args = ap.parse_args()

    pb, rpb, rgrpc = stubs(args.proto)
    admin = open(args.admin_key_file).read().strip()
    creds = grpc.ssl_channel_credentials(root_certificates=open(args.ca, "rb").read())
    channel = grpc.secure_channel(args.router, creds, options=[("grpc.ssl_target_name_override", "tessera-router")])
    router = rgrpc.RouterStub(channel)
    seen = {}

    # Plaintext to a TLS port: the handshake never happens.
    plain = rgrpc.RouterStub(grpc.insecure_channel(args.router))
    seen["plaintext"] = expect_code(
        "plaintext channel",
        lambda: plain.Status(rpb.RouterStatusRequest(timeout_ms=2000), timeout=5),
        grpc.StatusCode.UNAVAILABLE,
    )

    tenant, other = "pyacme", "pyglobex"
    for t in (tenant, other):
        request = pb.CreateTenantRequest(id=t, regions=["us-east"], home="us-east", survival="zone", partitions=1)
        retrying(args.timeout, f"create tenant {t}", lambda: router.CreateTenant(request, metadata=meta(admin), timeout=30))

    def key(t, scopes):
        return router.CreateKey(rpb.CreateKeyRequest(tenant=t, scopes=scopes, name="python"), metadata=meta(admin))

    created = key(tenant, ["search"])
    search_key = created.key
    write_key = key(tenant, ["write"]).key
    other_key = key(other, ["search", "write"]).key

    query = rpb.RouterSearchRequest(tenant=tenant, user="u:alice", query="pythonic", timeout_ms=5000)
    seen["keyless"] = expect_code(
        "keyless search", lambda: router.Search(query), grpc.StatusCode.UNAUTHENTICATED
    )
    seen["malformed"] = expect_code(
        "malformed key",
        lambda: router.Search(query, metadata=meta("not-a-key")),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    seen["other_tenant"] = expect_code(
        "another tenant's key",
        lambda: router.Search(query, metadata=meta(other_key)),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    missing = rpb.RouterSearchRequest(tenant="py-no-such-tenant", user="u:alice", query="x")
    seen["missing_tenant"] = expect_code(
        "a missing tenant", lambda: router.Search(missing, metadata=meta(other_key)), grpc.StatusCode.PERMISSION_DENIED
    )
    if seen["missing_tenant"].replace("py-no-such-tenant", "T") != seen["other_tenant"].replace(tenant, "T"):
        raise Failure(f"existence leaks: {seen['missing_tenant']!r} vs {seen['other_tenant']!r}")
    seen["wrong_scope"] = expect_code(
        "write key searching", lambda: router.Search(query, metadata=meta(write_key)), grpc.StatusCode.PERMISSION_DENIED
    )
    doc = {"id": "py-1", "space": "ENG", "title": "pythonic page", "body": "written from grpcio", "version": 1,
           "updated_at": "2026-03-01T09:00:00Z"}
    expect_code(
        "search key writing",
        lambda: router.PutDocuments(
            rpb.PutDocumentsRequest(tenant=tenant, docs_json=[json.dumps(doc).encode()]), metadata=meta(search_key)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    put_request = rpb.PutDocumentsRequest(tenant=tenant, docs_json=[json.dumps(doc).encode()], timeout_ms=10000)
    put = retrying(args.timeout, "the put", lambda: router.PutDocuments(put_request, metadata=meta(write_key)))
    if put.acked != 1:
        raise Failure(f"the write key's put acknowledged {put.acked} documents, not 1")
    hits = until(args.timeout, "the page to be searchable", lambda: found(router, query, search_key))
    seen["hits"] = hits

    router.RevokeKey(pb.RevokeKeyRequest(id=created.info.id), metadata=meta(admin))
    seen["revoked"] = until(args.timeout, "the revocation to take effect", lambda: refused(router, query, search_key))
    print(json.dumps(seen))


def found(router, query, key):
    try:
        ids = [h.id for h in router.Search(query, metadata=meta(key)).hits]
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE:
            raise Failure(f"search with the search key: {e.code().name}: {e.details()}")
        return None
    return ids if ids == ["py-1"] else None


def refused(router, query, key):
    try:
        router.Search(query, metadata=meta(key))
        return None
    except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAUTHENTICATED:
            raise Failure(f"revoked key: expected UNAUTHENTICATED, got {e.code().name}")
        return e.details()


def retrying(timeout, what, call):
    """Calls `call` until it does not fail with UNAVAILABLE (a tenant's shard still electing its leader), bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise Failure(f"{what}: {e.code().name}: {e.details()}")
        time.sleep(0.2)


def until(timeout, what, probe):
    """Polls `probe` (bounded) until it returns something; a condition wait, not a sleep-as-sync."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise Failure(f"timed out waiting for {what}")
        time.sleep(0.1)


if __name__ == "__main__":
    try:
        main()
    except Failure as f:
        print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
