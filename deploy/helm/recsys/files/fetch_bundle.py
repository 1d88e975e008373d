"""Init container of the chart: put an artifact bundle where the services read it, or wait for one.

    python fetch_bundle.py fetch --url URL --dest /app/artifacts [--sha256 HEX]
                                 [--registry-url URL --registry-dest /app/data/feast/registry.db
                                  [--registry-sha256 HEX]]
    python fetch_bundle.py wait  --artifacts /app/artifacts --marker /app/data/.recsys-materialized

``fetch`` (``bundle.source: url``): download a tar.gz of one bundle version folder (what
``tar czf <version>.tar.gz -C artifacts <version>`` makes; the files may also sit at the top of
the archive), unpack it into a staging folder, check every file against ``manifest.json``
(sha256, the format of ``common/bundle.py``) and refuse the whole bundle on any mismatch, a
missing or an unlisted file, or an unsafe member (absolute path, ``..``, link, device). Only
then is the staging folder renamed to ``<dest>/<version>`` and ``<dest>/current`` pointed at it,
so the services never see half a bundle. The Feast registry the services read their feature
views from is not part of the bundle; ``--registry-url`` fetches the one the pipeline that
materialised the features wrote. ``--sha256`` / ``--registry-sha256`` pin the downloads.

``wait`` (``bundle.source: volume``): block until the offline Job has published a bundle
(``<artifacts>/current/manifest.json``) and written its marker after materialising, so the
services do not start (and crash-loop) on an empty volume.

Standard library only: it runs with the Python of the serving images, before the service, and
is shipped in the chart (a ConfigMap), not in the images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
CHUNK = 1 << 20
RETRIES = 5
BACKOFF_S = 1.0


class FetchError(RuntimeError):
    """The bundle cannot be fetched or does not match its manifest: nothing was published."""


def log(msg: str) -> None:
    print(f"fetch_bundle: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, *, timeout: float = 60.0, retries: int = RETRIES,
             backoff_s: float = BACKOFF_S) -> str:
    """Stream ``url`` into ``dest``; returns its sha256. Retries connection errors and 5xx
    (an object store's transient answers); a 4xx is final (a wrong URL does not get better)."""
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"only http(s) URLs are supported (a presigned object-store URL works): {url!r}")
    last: Exception | None = None
    for attempt in range(retries):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(dest, "wb") as out:  # noqa: S310 - http(s) checked above
                while block := resp.read(CHUNK):
                    h.update(block)
                    out.write(block)
            return h.hexdigest()
        except urllib.error.HTTPError as exc:
            if exc.code < 500:
                raise FetchError(f"GET {_redact(url)}: HTTP {exc.code}") from exc
            last = exc
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        log(f"GET {_redact(url)} failed ({last}); attempt {attempt + 1} of {retries}")
    raise FetchError(f"GET {_redact(url)}: {last}")


def _redact(url: str) -> str:
    """A presigned URL's query string is a credential: never log it."""
    return url.split("?", 1)[0] + ("?…" if "?" in url else "")


def _safe_name(name: str) -> PurePosixPath:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise FetchError(f"unsafe path in the archive: {name!r}")
    return p


def unpack(archive: Path, into: Path) -> Path:
    """Extract regular files and folders only; returns the folder holding ``manifest.json``."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar.getmembers():
                rel = _safe_name(member.name)
                if member.isdir():
                    (into / rel).mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise FetchError(f"refusing {member.name!r}: only regular files and folders are unpacked")
                target = into / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                assert src is not None  # a regular file always has a stream
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
    except tarfile.TarError as exc:
        raise FetchError(f"{archive.name} is not a readable tar archive: {exc}") from exc
    if (into / MANIFEST).is_file():
        return into
    tops = list(into.iterdir())
    if len(tops) == 1 and (tops[0] / MANIFEST).is_file():
        return tops[0]
    raise FetchError(f"no {MANIFEST} at the top of the archive or in its single top-level folder")


def verify(root: Path) -> dict:
    """Every manifest file present with its sha256, nothing unlisted; returns the manifest."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
        files = manifest["files"]
        version = str(manifest["version"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FetchError(f"{MANIFEST} is unreadable or lacks version/files: {exc}") from exc
    if not version or "/" in version or version.startswith("."):
        raise FetchError(f"bundle version {version!r} is not a folder name")
    listed = {MANIFEST}
    for name, entry in files.items():
        rel = str(_safe_name(entry["path"]))
        listed.add(rel)
        path = root / rel
        if not path.is_file():
            raise FetchError(f"bundle {version}: file {name} ({rel}) is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise FetchError(f"bundle {version}: sha256 mismatch for {name} ({rel}): "
                             f"manifest {entry['sha256'][:12]}…, file {actual[:12]}…")
    extra = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
                   and str(p.relative_to(root)) not in listed)
    if extra:
        raise FetchError(f"bundle {version}: files not in the manifest: {', '.join(extra[:5])}")
    return manifest


def point_current(dest: Path, version: str) -> None:
    """``dest/current`` -> ``version``, replaced atomically (a rename over the old link)."""
    tmp = dest / f".current-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(version)
    os.replace(tmp, dest / "current")


def fetch(url: str, dest: Path, sha256: str | None = None, *, timeout: float = 60.0,
          retries: int = RETRIES, backoff_s: float = BACKOFF_S) -> str:
    """Download, unpack, verify, publish; returns the version now at ``dest/current``."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=dest) as tmp:
        archive = Path(tmp) / "bundle.tar.gz"
        digest = download(url, archive, timeout=timeout, retries=retries, backoff_s=backoff_s)
        if sha256 and digest != sha256.lower():
            raise FetchError(f"archive sha256 {digest[:12]}… is not the pinned {sha256[:12]}…")
        staging = Path(tmp) / "unpacked"
        staging.mkdir()
        root = unpack(archive, staging)
        manifest = verify(root)
        version = str(manifest["version"])
        target = dest / version
        if target.exists():  # an init container re-run on the same emptyDir: keep it if it verifies
            verify(target)
        else:
            os.replace(root, target)
    point_current(dest, version)
    return version


def fetch_file(url: str, dest: Path, sha256: str | None = None, **kw) -> str:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.part")
    digest = download(url, tmp, **kw)
    if sha256 and digest != sha256.lower():
        tmp.unlink(missing_ok=True)
        raise FetchError(f"{dest.name}: sha256 {digest[:12]}… is not the pinned {sha256[:12]}…")
    os.replace(tmp, dest)
    return digest


def wait(artifacts: Path, marker: Path, timeout_s: float = 0.0, every_s: float = 2.0) -> None:
    """Return once ``artifacts/current/manifest.json`` and ``marker`` exist (timeout 0: forever)."""
    start = last_note = time.monotonic()
    manifest = artifacts / "current" / MANIFEST
    while not (manifest.is_file() and marker.is_file()):
        now = time.monotonic()
        if timeout_s and now - start > timeout_s:
            raise FetchError(f"no bundle after {timeout_s:.0f}s: {manifest} or {marker} missing "
                             "(is the offline Job running? kubectl logs job/<release>-recsys-offline-<revision>)")
        if now - last_note >= 30:
            log(f"waiting for the offline Job: {manifest} {'ok' if manifest.is_file() else 'missing'}, "
                f"{marker} {'ok' if marker.is_file() else 'missing'}")
            last_note = now
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="download, verify and publish a bundle archive")
    f.add_argument("--url", default=os.environ.get("BUNDLE_URL"), help="http(s) URL of the tar.gz (env BUNDLE_URL)")
    f.add_argument("--dest", type=Path, required=True, help="artifacts root: <dest>/<version> and <dest>/current")
    f.add_argument("--sha256", default=os.environ.get("BUNDLE_SHA256") or None)
    f.add_argument("--registry-url", default=os.environ.get("REGISTRY_URL") or None)
    f.add_argument("--registry-dest", type=Path)
    f.add_argument("--registry-sha256", default=os.environ.get("REGISTRY_SHA256") or None)
    f.add_argument("--timeout", type=float, default=60.0, help="socket timeout of one read, seconds")
    w = sub.add_parser("wait", help="wait for the offline Job's bundle and marker")
    w.add_argument("--artifacts", type=Path, required=True)
    w.add_argument("--marker", type=Path, required=True)
    w.add_argument("--timeout", type=float, default=0.0, help="seconds; 0 = forever")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "wait":
            wait(args.artifacts, args.marker, args.timeout)
            log(f"bundle {(args.artifacts / 'current').resolve().name} is published and materialised")
            return 0
        if not args.url:
            parser.error("--url (or BUNDLE_URL) is required")
        if args.registry_url and not args.registry_dest:
            parser.error("--registry-url needs --registry-dest")
        version = fetch(args.url, args.dest, args.sha256, timeout=args.timeout)
        log(f"bundle {version} verified and published at {args.dest / 'current'}")
        if args.registry_url:
            fetch_file(args.registry_url, args.registry_dest, args.registry_sha256, timeout=args.timeout)
            log(f"Feast registry written to {args.registry_dest}")
        return 0
    except FetchError as exc:
        log(f"refused: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
