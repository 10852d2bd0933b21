"""An HTML template for ``dvc plots show`` / ``dvc plots diff`` that renders with no network.

DVC's default page loads vega, vega-lite and vega-embed from cdn.jsdelivr.net, so it shows nothing
offline. DVC takes a template (``plots.html_template``) with the placeholders ``{plot_divs}`` (and
``{refresh_tag}``); when it has no ``{scripts}`` placeholder, DVC's CDN ``<script>`` tags are left out.
This module writes such a template with the three libraries' minified builds **inlined**, so every
page DVC writes from it is one self-contained file (about 1.1 MB) that opens anywhere: copied off the
machine, attached to a CI run, opened from ``file://`` under a browser policy that blocks local
``src=`` scripts.

The builds come from the npm registry at set-up (``npm pack``: the tarballs only, no install scripts
run), pinned by version and by the registry's sha512 integrity, cached in a git-ignored folder. The
template is generated, not committed: no third-party code in the repository's history. Without npm
or network at set-up, a template loading the same pinned versions from the CDN is written instead
(so ``dvc plots`` works as before, online) and the command says so.
"""

from __future__ import annotations

import base64
import hashlib
import html
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VendoredScript:
    """One npm package's browser build: where it is in the tarball and the tarball's sha512."""

    package: str
    version: str
    build: str  # path inside the tarball
    integrity: str  # npm's "sha512-<base64>" of the tarball

    @property
    def spec(self) -> str:
        return f"{self.package}@{self.version}"

    @property
    def tarball(self) -> str:
        return f"{self.package}-{self.version}.tgz"


# vega-embed 6 needs vega ^5.21 and vega-lite 5 (DVC's specs use the vega-lite v5 schema). Order matters:
# vega-lite and vega-embed read the `vega` global.
SCRIPTS = (
    VendoredScript(
        "vega",
        "5.33.1",
        "package/build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    VendoredScript(
        "vega-lite",
        "5.23.0",
        "package/build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    VendoredScript(
        "vega-embed",
        "6.29.0",
        "package/build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
)

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC plots (biasloop)</title>
    <!-- {note} -->
{scripts}
    <style>
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""
DVC_PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")


def _integrity(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def fetch(cache: Path, npm: str = "npm") -> list[Path]:
    """The pinned tarballs in ``cache``, fetched with ``npm pack`` when missing; integrity checked.

    Raises:
        RuntimeError: npm is missing or failed (no network), or a tarball's sha512 is not the pinned one.
    """
    cache.mkdir(parents=True, exist_ok=True)
    missing = [script for script in SCRIPTS if not (cache / script.tarball).exists()]
    if missing:
        if shutil.which(npm) is None:
            raise RuntimeError(f"npm is not installed (needed once to fetch {', '.join(s.spec for s in missing)})")
        result = subprocess.run(
            [npm, "pack", "--silent", "--pack-destination", str(cache), *(s.spec for s in missing)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"npm pack {' '.join(s.spec for s in missing)} failed: {result.stderr.strip()[-500:]}")
    paths = []
    for script in SCRIPTS:
        path = cache / script.tarball
        if not path.exists():
            raise RuntimeError(f"{path}: npm pack did not write it")
        if _integrity(path) != script.integrity:
            path.unlink()  # a corrupt or substituted download: fetched again next time
            raise RuntimeError(f"{path}: sha512 differs from the pinned {script.integrity[:30]}...; removed")
        paths.append(path)
    return paths


def _read_member(tarball: Path, member: str) -> str | None:
    with tarfile.open(tarball, "r:gz") as archive:
        try:
            handle = archive.extractfile(member)
        except KeyError:
            return None
        return None if handle is None else handle.read().decode("utf-8")


def _licence(tarball: Path) -> str:
    """The package's LICENSE file, or (vega ships none) the licence its package.json names."""
    text = _read_member(tarball, "package/LICENSE")
    if text is not None:
        return text
    import json

    meta = json.loads(_read_member(tarball, "package/package.json") or "{}")
    repository = meta.get("repository")
    repository = repository.get("url") if isinstance(repository, dict) else repository
    return f"{meta.get('license', 'see the package')} (package.json; full text in {repository or 'the package repository'})"


def inline_template(cache: Path) -> str:
    """The template with the three pinned builds inlined (each preceded by its licence)."""
    blocks = []
    for script, tarball in zip(SCRIPTS, fetch(cache)):
        code = _read_member(tarball, script.build)
        if code is None:
            raise RuntimeError(f"{tarball}: no {script.build}")
        licence = _licence(tarball)
        for placeholder in DVC_PLACEHOLDERS:
            if placeholder in code:  # DVC's str.replace would splice plots into the library
                raise RuntimeError(f"{script.spec}: its build contains {placeholder}")
        code = code.replace("</script", "<\\/script")  # the only sequence that ends an inline script early
        blocks.append(
            f"    <!-- {script.spec} ({script.build.removeprefix('package/')}), licence:\n"
            f"{html.escape(licence).replace('--', '- -')}\n    -->\n    <script>{code}</script>"
        )
    note = "vega, vega-lite and vega-embed inlined from npm: " + ", ".join(s.spec for s in SCRIPTS)
    return PAGE.format(note=note, scripts="\n".join(blocks))


def cdn_template() -> str:
    """The fallback: the same pinned versions from the CDN (needs network to show plots)."""
    tags = "\n".join(f'    <script src="https://cdn.jsdelivr.net/npm/{s.spec}"></script>' for s in SCRIPTS)
    note = "vega not vendored (npm unavailable at set-up): loaded from the CDN; `make plots-template` to vendor"
    return PAGE.format(note=note, scripts=tags)


def write_template(out: Path, cache: Path) -> tuple[bool, str]:
    """Write the inlined template to ``out`` (atomically), or the CDN one when fetching fails.

    Returns:
        ``(offline, message)``: whether the written page works offline, and what was done.
    """
    from biasloop.core.io import atomic_path

    try:
        text, offline, message = inline_template(cache), True, f"{out}: vega, vega-lite, vega-embed inlined (offline)"
    except (RuntimeError, OSError, tarfile.TarError) as exc:
        text, offline, message = cdn_template(), False, f"{out}: CDN template written ({exc})"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as partial:
        partial.write_text(text, encoding="utf-8")
    return offline, message
