import boto3
import pytest

from s2s import storage
from s2s.storage import StorageError
from tests.conftest import free_port


def _put(bucket_uri: str, key: str, body: bytes) -> None:
    boto3.client("s3").put_object(Bucket=bucket_uri[len("s3://") :], Key=key, Body=body)


def test_local_expand_file_dir_glob(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.tsv", "d/sub/b.tsv", "d/_SUCCESS", "d/.hidden", "d/c.jsonl"):
        (tmp_path / name).write_text("x\ty\n")
    assert [f.uri for f in storage.expand(str(tmp_path / "d" / "a.tsv"))] == [
        str(tmp_path / "d" / "a.tsv")
    ]
    in_dir = [f.uri.rsplit("/", 1)[-1] for f in storage.expand(str(tmp_path / "d"))]
    assert in_dir == ["a.tsv", "c.jsonl", "b.tsv"]  # sorted by full path; markers skipped
    globbed = storage.expand(str(tmp_path / "d" / "**" / "*.tsv"))
    assert sorted(f.uri.rsplit("/", 1)[-1] for f in globbed) == ["a.tsv", "b.tsv"]
    assert all(f.size == 4 for f in globbed)


def test_s3_expand_read_write(bucket):
    for key in ("corpus/a.tsv", "corpus/b.tsv", "corpus/x/c.tsv", "corpus/_SUCCESS", "other.tsv"):
        _put(bucket, key, b"hello\tHallo\n")
    assert [f.uri for f in storage.expand(f"{bucket}/corpus/*.tsv")] == [
        f"{bucket}/corpus/a.tsv",
        f"{bucket}/corpus/b.tsv",
    ]
    assert len(storage.expand(f"{bucket}/corpus")) == 3
    storage.write_bytes(f"{bucket}/out/file.bin", b"\x00\x01")
    assert storage.read_bytes(f"{bucket}/out/file.bin") == b"\x00\x01"
    assert storage.exists(f"{bucket}/out/file.bin")
    storage.remove_tree(f"{bucket}/out")
    assert not storage.exists(f"{bucket}/out/file.bin")


def test_missing_inputs_fail_with_the_uri(tmp_path, bucket):
    with pytest.raises(StorageError, match=f"{tmp_path}/nope.tsv: no such file"):
        storage.check_inputs([str(tmp_path / "nope.tsv")])
    with pytest.raises(StorageError, match=f"{bucket}/nothing/\\*.tsv: no such file"):
        storage.check_inputs([f"{bucket}/nothing/*.tsv"])
    with pytest.raises(StorageError, match="s3://no-such-bucket-s2s/x.tsv: bucket does not exist"):
        storage.check_inputs(["s3://no-such-bucket-s2s/x.tsv"])


def test_output_checks(tmp_path, bucket):
    storage.check_output(f"{bucket}/runs/one")  # writable: no error, and no probe left behind
    assert storage.expand(f"{bucket}/runs") == []
    with pytest.raises(StorageError, match="s3://missing-bucket-s2s/out: bucket does not exist"):
        storage.check_output("s3://missing-bucket-s2s/out")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StorageError, match=f"{blocker}/out: not writable"):
        storage.check_output(str(blocker / "out"))


def test_unreachable_endpoint(monkeypatch, s3_endpoint):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens
    with pytest.raises(StorageError, match="s3://some-bucket/out: endpoint unreachable"):
        storage.check_output("s3://some-bucket/out")


def test_local_write_is_atomic(tmp_path):
    target = tmp_path / "deep" / "m.json"
    storage.write_bytes(str(target), b"{}")
    storage.write_bytes(str(target), b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert [p.name for p in target.parent.iterdir()] == ["m.json"]  # no temporary left


def test_unsupported_scheme():
    with pytest.raises(StorageError, match="unsupported scheme"):
        storage.filesystem("gs://bucket/x")
