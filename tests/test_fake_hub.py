"""The loopback Hub-protocol server (tests/fake_hub.py) and real clients pushing to and pulling from it.

The client side runs in subprocesses (tests/hub_client_check.py): `HF_ENDPOINT` is read when
`huggingface_hub` is imported, and this session already imported it in offline mode (conftest.py).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fake_hub import FakeHub, iter_fake_hub

CHECK_SCRIPT = Path(__file__).with_name("hub_client_check.py")

fake_hub = pytest.fixture(scope="module")(iter_fake_hub)


def _request(hub: FakeHub, method: str, path: str, body: bytes | dict | None = None,
             headers: dict[str, str] | None = None, token: bool = True) -> tuple[int, dict[str, str], bytes]:
    if isinstance(body, dict):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    headers = {**({"Authorization": "Bearer hf_fake"} if token else {}), **(headers or {})}
    req = urllib.request.Request(hub.endpoint + path, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def _create(hub: FakeHub, name: str, repo_type: str = "model", private: bool = False) -> int:
    payload = {"name": name, "organization": "org", "type": repo_type, "visibility": "private" if private else "public"}
    return _request(hub, "POST", "/api/repos/create", payload)[0]


def _commit_text(hub: FakeHub, repo_id: str, files: dict[str, bytes], revision: str = "main") -> dict:
    lines = [{"key": "header", "value": {"summary": "add files", "description": ""}}]
    lines += [{"key": "file", "value": {"path": p, "content": base64.b64encode(c).decode(), "encoding": "base64"}}
              for p, c in files.items()]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    status, _, out = _request(hub, "POST", f"/api/models/{repo_id}/commit/{revision}", body,
                              {"Content-Type": "application/x-ndjson"})
    assert status == 200, out
    return json.loads(out)


# --------------------------------------------------------------------------------- protocol (no HF clients)
def test_server_refuses_non_loopback_hosts():
    with pytest.raises(ValueError, match="loopback"):
        FakeHub(host="0.0.0.0")


def test_stop_joins_every_thread_even_with_an_idle_keep_alive_connection():
    before = set(threading.enumerate())
    hub = FakeHub().start()
    conn = http.client.HTTPConnection("127.0.0.1", int(hub.endpoint.rsplit(":", 1)[1]), timeout=5)
    conn.request("GET", "/api/whoami-v2", headers={"Authorization": "Bearer hf_fake"})
    assert json.loads(conn.getresponse().read())["name"] == "fake-user"  # connection stays open (HTTP/1.1)
    start = time.monotonic()
    hub.stop()
    assert time.monotonic() - start < 5
    assert set(threading.enumerate()) <= before
    conn.close()
    with pytest.raises(RuntimeError):
        hub.endpoint  # noqa: B018 - property access is the check


def test_create_repo_twice_answers_409(fake_hub):
    assert _create(fake_hub, "twice") == 200
    assert _create(fake_hub, "twice") == 409
    assert fake_hub.list_files("org/twice") == [".gitattributes"]


def test_create_repo_outside_user_namespaces_is_forbidden(fake_hub):
    status, _, _ = _request(fake_hub, "POST", "/api/repos/create", {"name": "x", "organization": "someone-else"})
    assert status == 403


def test_missing_repo_revision_and_entry_carry_hub_error_codes(fake_hub):
    _create(fake_hub, "codes")
    cases = {
        "/api/models/org/nope": "RepoNotFound",
        "/api/models/org/codes/revision/nope": "RevisionNotFound",
        "/api/models/org/codes/tree/main/missing-dir": "EntryNotFound",
        "/org/codes/resolve/main/missing.txt": "EntryNotFound",
    }
    for path, code in cases.items():
        status, headers, _ = _request(fake_hub, "GET", path)
        assert (status, headers.get("X-Error-Code")) == (404, code), path


def test_private_repo_is_hidden_without_a_token(fake_hub):
    _create(fake_hub, "secret", private=True)
    assert _request(fake_hub, "GET", "/api/models/org/secret")[0] == 200
    status, headers, _ = _request(fake_hub, "GET", "/api/models/org/secret", token=False)
    assert (status, headers.get("X-Error-Code")) == (404, "RepoNotFound")


def test_commit_then_resolve_serves_content_with_etag_commit_and_ranges(fake_hub):
    _create(fake_hub, "resolve")
    content = b"hello fake hub\n"
    commit = _commit_text(fake_hub, "org/resolve", {"sub/dir/a.txt": content})
    status, headers, body = _request(fake_hub, "GET", "/org/resolve/resolve/main/sub/dir/a.txt")
    git_oid = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    assert (status, body, headers["X-Repo-Commit"]) == (200, content, commit["commitOid"])
    assert headers["ETag"] == f'"{git_oid}"'
    status, headers, body = _request(fake_hub, "GET", "/org/resolve/resolve/main/sub/dir/a.txt",
                                     headers={"Range": "bytes=6-9"})
    assert (status, body, headers["Content-Range"]) == (206, b"fake", f"bytes 6-9/{len(content)}")
    status, _, body = _request(fake_hub, "GET", "/api/models/org/resolve/tree/main/sub")
    assert status == 200 and [e["path"] for e in json.loads(body)] == ["sub/dir"]
    status, _, body = _request(fake_hub, "GET", "/api/models/org/resolve/tree/main?recursive=true")
    assert [e["path"] for e in json.loads(body)] == ["sub", "sub/dir", ".gitattributes", "sub/dir/a.txt"]


def test_preupload_picks_lfs_for_binaries_and_returns_remote_oids(fake_hub):
    _create(fake_hub, "modes")
    _commit_text(fake_hub, "org/modes", {"notes.txt": b"v1"})
    files = [{"path": "notes.txt", "sample": base64.b64encode(b"v2").decode(), "size": 2},
             {"path": "w.safetensors", "sample": base64.b64encode(b"abc").decode(), "size": 3},
             {"path": "blob.dat", "sample": base64.b64encode(b"\0\1\2").decode(), "size": 3}]
    status, _, body = _request(fake_hub, "POST", "/api/models/org/modes/preupload/main", {"files": files})
    answer = {f["path"]: (f["uploadMode"], f["oid"]) for f in json.loads(body)["files"]}
    assert status == 200
    assert answer == {"notes.txt": ("regular", hashlib.sha1(b"blob 2\0v1").hexdigest()),
                      "w.safetensors": ("lfs", None), "blob.dat": ("lfs", None)}


def test_lfs_upload_is_checked_against_its_sha256_and_committed_by_oid(fake_hub):
    _create(fake_hub, "lfs")
    data = b"\0binary weights\0"
    oid = hashlib.sha256(data).hexdigest()
    batch = {"operation": "upload", "transfers": ["basic"], "objects": [{"oid": oid, "size": len(data)}]}
    status, _, body = _request(fake_hub, "POST", "/org/lfs.git/info/lfs/objects/batch", batch)
    href = json.loads(body)["objects"][0]["actions"]["upload"]["href"]
    assert status == 200 and href.startswith(fake_hub.endpoint)
    assert _request(fake_hub, "PUT", href[len(fake_hub.endpoint):], b"tampered")[0] == 400
    assert _request(fake_hub, "PUT", href[len(fake_hub.endpoint):], data)[0] == 200
    lines = [{"key": "header", "value": {"summary": "weights"}},
             {"key": "lfsFile", "value": {"path": "w.bin", "algo": "sha256", "oid": oid, "size": len(data)}}]
    body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    assert _request(fake_hub, "POST", "/api/models/org/lfs/commit/main", body,
                    {"Content-Type": "application/x-ndjson"})[0] == 200
    assert fake_hub.read_file("org/lfs", "w.bin") == data and fake_hub.is_lfs("org/lfs", "w.bin")
    status, headers, _ = _request(fake_hub, "HEAD", "/org/lfs/resolve/main/w.bin")
    assert (status, headers["X-Linked-Etag"], headers["X-Linked-Size"]) == (200, f'"{oid}"', str(len(data)))


def test_branch_commits_do_not_touch_main(fake_hub):
    _create(fake_hub, "branches")
    assert _request(fake_hub, "POST", "/api/models/org/branches/branch/dev", {})[0] == 200
    assert _request(fake_hub, "POST", "/api/models/org/branches/branch/dev", {})[0] == 409
    _commit_text(fake_hub, "org/branches", {"dev.txt": b"dev"}, revision="dev")
    assert fake_hub.list_files("org/branches", revision="dev") == [".gitattributes", "dev.txt"]
    assert fake_hub.list_files("org/branches") == [".gitattributes"]
    refs = json.loads(_request(fake_hub, "GET", "/api/models/org/branches/refs")[2])
    assert sorted(b["name"] for b in refs["branches"]) == ["dev", "main"]


# --------------------------------------------------------------------------------- real clients, end to end
@pytest.fixture(scope="module")
def round_trip(fake_hub, tmp_path_factory):
    """Push tiny artefacts from one client process, then pull them from a second one with a fresh cache."""
    work = tmp_path_factory.mktemp("hub_round_trip")
    timings, results = {}, {}
    for step in ("push", "pull"):
        start = time.monotonic()
        proc = fake_hub.run_python([str(CHECK_SCRIPT), step, str(work)], home=work / f"{step}_home", timeout=240)
        timings[step] = time.monotonic() - start
        results[step] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"fake-hub round trip: push {timings['push']:.1f}s, pull {timings['pull']:.1f}s", file=sys.stderr)
    return results["push"], results["pull"]


def test_model_push_creates_private_repo_with_lfs_weights_and_commit_message(fake_hub, round_trip):
    pushed, _ = round_trip
    assert pushed["whoami"] == fake_hub.user
    assert fake_hub.is_private("org/tiny")
    assert "x" in fake_hub.commit_titles("org/tiny")
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(fake_hub.list_files("org/tiny"))
    assert fake_hub.is_lfs("org/tiny", "model.safetensors") and not fake_hub.is_lfs("org/tiny", "config.json")


def test_pulled_model_gives_identical_logits_and_tokenizer_encodes_identically(round_trip):
    pushed, pulled = round_trip
    assert pulled["main_logits_equal"] and pulled["main_num_layers"] == 1
    assert pulled["token_ids"] == pushed["token_ids"]


def test_branch_push_is_readable_from_branch_and_absent_from_main(fake_hub, round_trip):
    _, pulled = round_trip
    assert pulled["dev_num_layers"] == 2 and pulled["dev_logits_equal"]
    assert pulled["dev_marker"] == "only on dev\n" and pulled["dev_marker_on_main"] is False
    assert "dev_only.txt" not in fake_hub.list_files("org/tiny")
    assert fake_hub.commit_titles("org/tiny", revision="dev")[:2] == ["dev marker", "dev weights"]


def test_upload_folder_with_remote_code_is_snapshot_downloadable(fake_hub, round_trip):
    pushed, pulled = round_trip
    assert fake_hub.branches("org/remote")["main"] == pushed["remote_commit"]
    assert pulled["remote_files"] == [".gitattributes", "config.json", "configuration_toy.py"]
    assert pulled["remote_py_equal"] and pulled["remote_config"] == ["ToyConfig", 7]


def test_model_card_push_replaces_readme(fake_hub, round_trip):
    _, pulled = round_trip
    assert pulled["card"] == {"license": "mit", "tags": ["unimp-fake-hub"], "marker": True}
    assert b"UniMP fake-hub model card marker" in fake_hub.read_file("org/tiny", "README.md")


def test_dataset_dict_with_images_round_trips_pixel_equal(fake_hub, round_trip):
    pushed, pulled = round_trip
    files = fake_hub.list_files("org/ds", repo_type="dataset")
    assert {"README.md", "data/train-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"} <= set(files)
    assert fake_hub.is_lfs("org/ds", "data/train-00000-of-00001.parquet", repo_type="dataset")
    assert fake_hub.branches("org/ds", repo_type="dataset")["main"] == pushed["dataset_commit"]
    assert pulled["dataset_splits"] == {"train": 3, "test": 2}
    assert pulled["dataset_labels"] == {"train": [0, 1, 2], "test": [0, 1]}
    assert pulled["dataset_images_equal"]


def test_hf_api_refs_tags_paths_info_pull_requests_and_deletes(round_trip):
    api = round_trip[0]["api"]
    assert api["branches"] == ["dev", "main"] and api["tags"] == ["v0"]
    assert api["commit_titles"] == ["card", "add tokenizer", "x", "initial commit"]
    assert api["paths_info"] == {"config.json": [True, False, True], "model.safetensors": [True, True, True]}
    assert api["dataset_tree"] == [".gitattributes", "README.md", "data", "data/test-00000-of-00001.parquet",
                                   "data/train-00000-of-00001.parquet"]
    assert api["safetensors_sha256_known"]
    assert api["pr"] == ["refs/pr/1", False, True]
    assert api["scratch_after_delete"] == [".gitattributes"] and api["scratch_deleted"]


def test_clients_only_call_implemented_routes(fake_hub, round_trip):
    assert fake_hub.unhandled == [] and fake_hub.errors == []
