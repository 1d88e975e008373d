"""The chart's bundle init script (deploy/helm/recsys/files/fetch_bundle.py) against a real HTTP
server: a good bundle is published and loads with the services' own loader; a corrupt, incomplete,
padded or unsafe one is refused with nothing published."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import io
import json
import shutil
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.bundle import load_bundle
from common.settings import REPO_ROOT

SCRIPT = REPO_ROOT / "deploy" / "helm" / "recsys" / "files" / "fetch_bundle.py"
_spec = importlib.util.spec_from_file_location("fetch_bundle", SCRIPT)
fb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fb)

VERSION = "20261203T140558Z-testbndl"


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """(base URL, served folder, request paths seen); /fail-once/<name> answers 503 the first time."""
    root = tmp_path / "www"
    root.mkdir()
    seen: list[str] = []
    failed: set[str] = set()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append(self.path)
            if self.path.startswith("/fail-once/"):
                if self.path not in failed:
                    failed.add(self.path)
                    self.send_error(503, "try again")
                    return
                self.path = self.path.removeprefix("/fail-once")
            super().do_GET()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", root, seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def make_bundle(folder: Path, bundle_path: Path) -> Path:
    """A copy of the published bundle (real manifest, real files) under ``folder/VERSION``, with
    its version renamed so it never collides with the real one."""
    dest = folder / VERSION
    shutil.copytree(bundle_path.resolve(), dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["version"] = VERSION
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


def tarball(src: Path, out: Path, *, top_level: bool = True, extra: dict[str, bytes] | None = None,
            symlink: tuple[str, str] | None = None) -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(src.rglob("*")):
            arc = (f"{src.name}/" if top_level else "") + str(path.relative_to(src))
            tar.add(path, arcname=arc, recursive=False)
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink[0])
            info.type, info.linkname = tarfile.SYMTYPE, symlink[1]
            tar.addfile(info)
    return out


def test_fetch_publishes_a_bundle_the_services_load(server, tmp_path, bundle_path):
    base, www, seen = server
    src = make_bundle(tmp_path / "src", bundle_path)
    tarball(src, www / "b.tar.gz")
    (www / "registry.db").write_bytes(b"feast registry bytes")
    dest = tmp_path / "artifacts"
    rc = fb.main(["fetch", "--url", f"{base}/b.tar.gz", "--dest", str(dest),
                  "--sha256", hashlib.sha256((www / "b.tar.gz").read_bytes()).hexdigest(),
                  "--registry-url", f"{base}/registry.db", "--registry-dest", str(tmp_path / "data/feast/registry.db")])
    assert rc == 0
    assert (dest / "current").is_symlink() and (dest / "current").resolve() == (dest / VERSION).resolve()
    bundle = load_bundle(dest / "current")  # the services' loader: every sha256 checked again
    assert bundle.version == VERSION
    assert (tmp_path / "data/feast/registry.db").read_bytes() == b"feast registry bytes"
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no staging left behind
    # an init container re-run on the same emptyDir: same bundle, verified, link kept
    assert fb.fetch(f"{base}/b.tar.gz", dest) == VERSION
    assert seen.count("/b.tar.gz") == 2


def test_files_at_the_top_of_the_archive_and_a_transient_503(server, tmp_path, bundle_path):
    base, www, seen = server
    src = make_bundle(tmp_path / "src", bundle_path)
    tarball(src, www / "flat.tar.gz", top_level=False)
    dest = tmp_path / "artifacts"
    assert fb.fetch(f"{base}/fail-once/flat.tar.gz", dest, backoff_s=0.01) == VERSION
    assert seen == ["/fail-once/flat.tar.gz", "/fail-once/flat.tar.gz"]
    assert load_bundle(dest / "current").version == VERSION


def _refused(base: str, name: str, dest: Path, capsys, **kw) -> str:
    rc = fb.main(["fetch", "--url", f"{base}/{name}", "--dest", str(dest), *kw.get("args", [])])
    assert rc == 1
    assert not (dest / "current").exists(), "a refused bundle must never become current"
    assert not (dest / VERSION).exists()
    return capsys.readouterr().err


def test_a_corrupt_file_is_refused(server, tmp_path, bundle_path, capsys):
    base, www, _ = server
    src = make_bundle(tmp_path / "src", bundle_path)
    ranker = src / "ranker.onnx"
    data = bytearray(ranker.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    ranker.write_bytes(bytes(data))
    tarball(src, www / "corrupt.tar.gz")
    err = _refused(base, "corrupt.tar.gz", tmp_path / "artifacts", capsys)
    assert "sha256 mismatch for ranker (ranker.onnx)" in err


def test_a_missing_file_an_unlisted_file_and_unsafe_members_are_refused(server, tmp_path, bundle_path, capsys):
    base, www, _ = server
    src = make_bundle(tmp_path / "src", bundle_path)
    (src / "item_tower.onnx").unlink()
    tarball(src, www / "missing.tar.gz")
    assert "file item_tower (item_tower.onnx) is missing" in _refused(base, "missing.tar.gz", tmp_path / "a1", capsys)

    src = make_bundle(tmp_path / "src2", bundle_path)
    tarball(src, www / "extra.tar.gz", extra={f"{VERSION}/payload.sh": b"#!/bin/sh\n"})
    assert "files not in the manifest: payload.sh" in _refused(base, "extra.tar.gz", tmp_path / "a2", capsys)

    tarball(src, www / "traversal.tar.gz", extra={"../escape.txt": b"x"})
    assert "unsafe path in the archive: '../escape.txt'" in _refused(base, "traversal.tar.gz", tmp_path / "a3", capsys)
    assert not (tmp_path / "escape.txt").exists()

    tarball(src, www / "link.tar.gz", symlink=(f"{VERSION}/evil", "/etc/passwd"))
    assert "only regular files and folders" in _refused(base, "link.tar.gz", tmp_path / "a4", capsys)


def test_a_wrong_pin_a_404_and_a_non_http_url_are_refused(server, tmp_path, bundle_path, capsys):
    base, www, seen = server
    src = make_bundle(tmp_path / "src", bundle_path)
    tarball(src, www / "b.tar.gz")
    err = _refused(base, "b.tar.gz", tmp_path / "a1", capsys, args=["--sha256", "0" * 64])
    assert "is not the pinned 000000000000" in err
    err = _refused(base, "nope.tar.gz", tmp_path / "a2", capsys)
    assert "HTTP 404" in err and seen.count("/nope.tar.gz") == 1  # a 4xx is not retried
    assert fb.main(["fetch", "--url", "file:///etc/passwd", "--dest", str(tmp_path / "a3")]) == 1
    assert "only http(s) URLs" in capsys.readouterr().err


def test_a_presigned_query_string_is_not_logged(server, tmp_path, capsys):
    base, _, _ = server
    assert fb.main(["fetch", "--url", f"{base}/gone.tar.gz?X-Amz-Signature=s3cr3t", "--dest", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "gone.tar.gz?…" in err and "s3cr3t" not in err


def test_wait_returns_once_the_bundle_and_the_marker_exist(tmp_path, bundle_path):
    artifacts, marker = tmp_path / "artifacts", tmp_path / "data" / ".recsys-materialized"
    with pytest.raises(fb.FetchError, match="no bundle after 0s"):
        fb.wait(artifacts, marker, timeout_s=0.2, every_s=0.05)

    def job() -> None:  # what the offline Job does: publish, then (after materialising) the marker
        time.sleep(0.2)
        make_bundle(artifacts, bundle_path)
        (artifacts / "current").symlink_to(VERSION)
        time.sleep(0.2)
        marker.parent.mkdir(parents=True)
        marker.write_text("2026-12-03T14:00:00Z\n")

    thread = threading.Thread(target=job)
    start = time.monotonic()
    thread.start()
    fb.wait(artifacts, marker, timeout_s=10, every_s=0.05)
    thread.join()
    assert 0.35 < time.monotonic() - start < 5  # not before the marker, not much after
