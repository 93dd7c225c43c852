"""The key set of a cluster (``cluster.keys``) and ``bootstrap.py keys``: hashes only on disk,
a secret shown once, a private file, the ``admin`` key made from the cluster's ``api_key``, and
one-line errors for what the user got wrong."""

from __future__ import annotations

import json
import re
import stat

import pytest

import bootstrap
from cluster.errors import ClusterError
from cluster.keys import ADMIN_KEY, KEYS_FILE, ApiKey, KeySet, hash_secret, prepare
from cluster.pillar import checked_api_keys
from cluster.secrets import load_or_create

SECRET_LINE = re.compile(r"secret \(shown this once, stored nowhere\): (\S+)")


def test_a_new_key_is_hashed_scoped_and_limited():
    keyset, secret = KeySet().add("ci", "write", 10, 20)
    (key,) = keyset.keys
    assert key == ApiKey("ci", "write", hash_secret(secret), 10.0, 20)
    assert len(secret) >= 40 and secret not in json.dumps(keyset.to_json())
    assert hash_secret("abc") == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    second, other = keyset.add("ci2")
    assert other != secret and second.get("ci2").scope == "read"  # least privilege by default
    assert second.get("ci2").rate > 0  # and limited by default


@pytest.mark.parametrize(("name", "scope", "rate", "burst", "message"), [
    ("bad name", "read", 1, 1, "key name 'bad name'"),
    ("-x", "read", 1, 1, "key name '-x'"),
    ("ok", "root", 1, 1, "--scope 'root'"),
    ("ok", "read", -1, 1, "--rate -1"),
    ("ok", "read", float("nan"), 1, "--rate nan"),
    ("ok", "read", 1, 0, "--burst 0"),
    ("ok", "read", 0, -1, "--burst -1"),
    (ADMIN_KEY, "admin", 0, 0, "the cluster's own"),
])
def test_bad_keys_are_refused(name, scope, rate, burst, message):
    with pytest.raises(ClusterError, match=re.escape(message)):
        KeySet().add(name, scope, rate, burst)


def test_names_are_unique_and_admin_stays():
    keyset, _ = KeySet().with_admin("s").add("ci")
    with pytest.raises(ClusterError, match="already a key named 'ci'"):
        keyset.add("ci")
    with pytest.raises(ClusterError, match="cannot be revoked"):
        keyset.revoke(ADMIN_KEY)
    with pytest.raises(ClusterError, match="no key named 'nope' \\(keys: admin, ci\\)"):
        keyset.revoke("nope")
    assert [key.name for key in keyset.revoke("ci").keys] == [ADMIN_KEY]


def test_the_admin_key_follows_the_clusters_api_key(tmp_path):
    path = tmp_path / KEYS_FILE
    first = prepare(path, "one")
    assert first.keys == (ApiKey(ADMIN_KEY, "admin", hash_secret("one"), 0.0, 0),)
    with_ci, _ = first.add("ci")
    with_ci.save(path)
    again = prepare(path, "two")  # the secret changed: the admin hash follows, ci stays
    assert [key.name for key in again.keys] == [ADMIN_KEY, "ci"]
    assert again.get(ADMIN_KEY).sha256 == hash_secret("two")
    assert KeySet.load(path) == again


def test_the_pillar_takes_the_set_as_it_is(tmp_path):
    keyset, _ = KeySet().with_admin("s").add("ci", "write", 2.5, 5)
    assert checked_api_keys(keyset.pillar()) == keyset.pillar()


def test_a_broken_file_is_a_one_line_error(tmp_path):
    path = tmp_path / KEYS_FILE
    path.write_text('{"keys": [{"name": "x"}]}')
    with pytest.raises(ClusterError, match="is not a key set"):
        KeySet.load(path)


# --- bootstrap.py keys ---------------------------------------------------------------------

@pytest.fixture
def local_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SQLGATE_CLUSTER_DIR", str(tmp_path))
    return tmp_path / "local" / "sqlgate"


def keys(capsys, *argv: str, provider: str = "local") -> tuple[int, str, str]:
    code = bootstrap.main(["keys", *argv, "--provider", provider])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("provider", ["local", "aws"])
def test_add_shows_the_secret_once_and_stores_its_hash(tmp_path, monkeypatch, capsys,
                                                       provider):
    monkeypatch.setenv("SQLGATE_CLUSTER_DIR", str(tmp_path))
    private = tmp_path / "local" / "sqlgate" if provider == "local" else tmp_path / "aws"
    load_or_create(private / "secrets.json")  # as up made it
    code, out, err = keys(capsys, "add", "ci", "--scope", "write", "--rate", "10", "--burst",
                          "20", provider=provider)
    assert code == 0, err
    secret = SECRET_LINE.search(out).group(1)
    assert "the next 'bootstrap.py up' applies this set" in out
    path = private / KEYS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert secret not in text and hash_secret(secret) in text
    stored = json.loads(text)["keys"]
    assert [key["name"] for key in stored] == [ADMIN_KEY, "ci"]
    assert stored[1] == {"name": "ci", "scope": "write", "sha256": hash_secret(secret),
                         "rate": 10.0, "burst": 20}

    code, listed, _ = keys(capsys, "list", provider=provider)
    assert code == 0
    assert secret not in listed and hash_secret(secret)[:12] in listed
    assert re.search(r"^ci\s+write\s+10/s, burst 20", listed, re.MULTILINE)
    assert re.search(r"^admin\s+admin\s+unlimited", listed, re.MULTILINE)

    code, out, _ = keys(capsys, "revoke", "ci", provider=provider)
    assert code == 0 and "revoked key 'ci'" in out
    assert "ci" not in {key["name"] for key in json.loads(path.read_text())["keys"]}


def test_keys_before_the_cluster_exists(local_dir, capsys):
    code, out, _ = keys(capsys, "list")
    assert code == 0 and "no keys yet" in out
    code, out, _ = keys(capsys, "add", "early")
    assert code == 0 and SECRET_LINE.search(out)
    assert [k["name"] for k in json.loads((local_dir / KEYS_FILE).read_text())["keys"]] == \
        ["early"]
    code, _, err = keys(capsys, "add", "later", "--apply")
    assert code == 2 and "no running cluster" in err and err.count("\n") == 1
    assert "later" in (local_dir / KEYS_FILE).read_text()  # saved for the next up


@pytest.mark.parametrize(("argv", "message"), [
    (("add",), "keys add needs the key's NAME"),
    (("revoke",), "keys revoke needs the key's NAME"),
    (("revoke", "ghost"), "no key named 'ghost'"),
    (("add", "a b"), "key name 'a b'"),
])
def test_mistakes_are_one_line_errors(local_dir, capsys, argv, message):
    code, out, err = keys(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err


def test_a_bad_scope_is_refused_by_the_command_line(local_dir, capsys):
    with pytest.raises(SystemExit):
        keys(capsys, "add", "x", "--scope", "root")
    assert "invalid choice: 'root'" in capsys.readouterr().err


def test_the_other_commands_keep_their_shape():
    parser = bootstrap.build_parser()
    args = parser.parse_args(["up", "--provider", "local", "--tls-cert", "c", "--tls-key", "k"])
    assert (args.command, args.tls_cert, args.tls_key) == ("up", "c", "k")
    for command in ("status", "down"):
        assert parser.parse_args([command, "--provider", "aws"]).command == command
    args = parser.parse_args(["keys", "add", "ci", "--scope", "admin", "--apply"])
    assert (args.action, args.name, args.scope, args.apply) == ("add", "ci", "admin", True)
