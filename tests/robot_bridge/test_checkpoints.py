import pytest

from robot_bridge.checkpoints import (
    CheckpointError,
    CheckpointStore,
    build_manifest,
    checked_entries,
)


def make_checkpoint(root, weights=b"\x00" * 1000):
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"policy_type": "random"}')
    (root / "model.safetensors").write_bytes(weights)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "vocab.json").write_text("{}")
    return root


def test_manifest_identity_is_content_not_location(tmp_path):
    a = make_checkpoint(tmp_path / "a")
    b = make_checkpoint(tmp_path / "b")
    sha_a, files = build_manifest(a)
    assert sha_a == build_manifest(b)[0]
    assert [f.path for f in files] == ["config.json", "model.safetensors", "tokenizer/vocab.json"]
    (b / "model.safetensors").write_bytes(b"\x01" * 1000)
    assert build_manifest(b)[0] != sha_a


def test_store_assembles_chunks_and_verifies_every_file(tmp_path):
    src = make_checkpoint(tmp_path / "src", weights=bytes(range(256)) * 8)
    sha, entries = build_manifest(src)
    store = CheckpointStore(tmp_path / "store")
    store.begin(sha, entries)
    for e in entries:
        data = (src / e.path).read_bytes()
        for off in range(0, len(data), 300):  # out-of-order is fine too, but chunks must fit
            store.write_chunk(sha, e, off, memoryview(data[off : off + 300]))
    final = store.commit(sha, entries)
    assert store.has(sha) and (final / "tokenizer" / "vocab.json").read_text() == "{}"
    assert build_manifest(final)[1][1].sha256 == entries[1].sha256


def test_store_refuses_chunks_outside_a_file_and_bad_manifests(tmp_path):
    src = make_checkpoint(tmp_path / "src")
    sha, entries = build_manifest(src)
    store = CheckpointStore(tmp_path / "store")
    store.begin(sha, entries)
    with pytest.raises(CheckpointError, match="outside"):
        store.write_chunk(sha, entries[0], entries[0].size - 1, memoryview(b"xx"))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        store.begin("0" * 64, entries)
    with pytest.raises(CheckpointError, match="no config.json"):
        checked_entries([e.to_dict() for e in entries if e.path != "config.json"])
    with pytest.raises(CheckpointError, match="unsafe"):
        checked_entries([{"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}])
