"""The report in a real browser: headless Chromium, network off, no console errors, organs drawn in 3D.

Skips (with the reason) where Chromium is not installed; CI installs the Debian package ``chromium``.
Chromium runs with a fresh profile, every host name resolving to nothing (``--host-resolver-rules``), and
software WebGL (SwiftShader), so the page must bring everything it needs with it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from organseg.config import DEFAULT_COLORS
from organseg.report import build_report

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium not found (Debian package 'chromium'): cannot open the report in a browser",
)

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # network off: no host name resolves
    "--enable-unsafe-swiftshader",  # software WebGL for plotly's 3D view
    "--virtual-time-budget=20000",  # let the page's scripts finish before dumping or shooting
]
#: Chromium's and the software GL driver's performance hints when plotly reads pixels back (both logged
#: as console messages); not errors of the page.
_BENIGN = ("willReadFrequently", "GL Driver Message (OpenGL, Performance")
#: The 3D view's background (report_figures: paper_bgcolor #101218).
VIEW_BG = (16, 18, 24)


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",
        timeout=180,
    )


def console_problems(stderr: str) -> list[str]:
    """Console messages (Chromium logs them all at INFO:CONSOLE) and failed loads, minus known hints."""
    lines = [ln for ln in stderr.splitlines() if ":CONSOLE" in ln or "net::ERR" in ln]
    return [ln for ln in lines if not any(b in ln for b in _BENIGN)]


def organ_pixels(img: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    """Where ``img`` shows a shade of ``rgb`` (same hue and saturation, any brightness above dark)."""
    px = img[..., :3].astype(np.float64)
    c = np.asarray(rgb, dtype=np.float64)
    norm = np.linalg.norm(px, axis=-1)
    return ((px @ c) / (norm * np.linalg.norm(c) + 1e-9) > 0.997) & (norm > 60)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A report of a small synthetic CT with liver and spleen (no shared data needed)."""
    import nibabel as nib

    folder = tmp_path_factory.mktemp("report")
    shape = (48, 40, 30)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ct = np.full(shape, -1000, np.int16)
    ct[((ii - 24) / 22) ** 2 + ((jj - 20) / 18) ** 2 < 1] = 40
    mask = np.zeros(shape, np.uint8)
    mask[((ii - 32) / 9) ** 2 + ((jj - 20) / 8) ** 2 + ((kk - 15) / 10) ** 2 < 1] = (
        1  # liver, patient's right
    )
    mask[((ii - 12) / 5) ** 2 + ((jj - 24) / 5) ** 2 + ((kk - 15) / 7) ** 2 < 1] = 4  # spleen, left
    ct[mask == 1], ct[mask == 4] = 60, 50
    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    nib.save(nib.Nifti1Image(ct, affine), folder / "ct.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "mask.nii.gz")
    out = build_report(folder / "mask.nii.gz", folder / "ct.nii.gz", folder / "report.html")
    return out, ["liver", "spleen"]


def test_report_runs_without_console_errors_and_lists_every_organ(page, tmp_path: Path):
    path, organs = page
    done = chromium(path, tmp_path / "profile", "--enable-logging=stderr", "--v=0", "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    assert console_problems(done.stderr) == []
    dom = done.stdout
    assert re.findall(r'<tr data-organ="([a-z_]+)"', dom) == organs
    # plotly ran (it builds its containers from script) and drew the 3D scene into a WebGL canvas
    assert 'class="gl-container"' in dom and "<canvas" in dom


def test_3d_view_draws_the_organs_in_their_colours(page, tmp_path: Path):
    path, organs = page
    shot = tmp_path / "shot.png"
    done = chromium(path, tmp_path / "profile", "--window-size=1280,1500", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    img = iio.imread(shot)[..., :3]
    background = np.all(img == VIEW_BG, axis=-1)
    rows, cols = np.nonzero(background)
    assert rows.size > 10_000, "the 3D view's dark panel is not on the page"
    view = img[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    for organ in organs:
        # many pixels: the mesh, not the legend's small swatch
        assert organ_pixels(view, DEFAULT_COLORS[organ]).sum() > 800, organ
    # and the liver (patient's right) is drawn left of the spleen: the anterior view
    liver_cols = np.nonzero(organ_pixels(view, DEFAULT_COLORS["liver"]))[1]
    spleen_cols = np.nonzero(organ_pixels(view, DEFAULT_COLORS["spleen"]))[1]
    assert np.median(liver_cols) < np.median(spleen_cols)
