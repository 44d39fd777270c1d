"""Start-up and exit of ``organseg infer`` (issue 19): MONAI imported without its plotting extras, freed
memory kept by malloc, and the process ended without interpreter teardown once all is written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from organseg import io

_LEAN = textwrap.dedent(
    """
    import sys
    import organseg.infer as oi
    oi._prefetch_imports(lean=sys.argv[1] == "lean").join()
    assert "monai.inferers" in sys.modules
    print("matplotlib" in sys.modules, "scipy.signal" in sys.modules)
    import matplotlib.pyplot, scipy.signal  # later imports work as usual
    """
)


def test_lean_import_skips_monai_plotting_extras():
    """Without ``lean`` MONAI imports matplotlib and scipy.signal (so the check below means something);
    with it neither is loaded, and both import normally afterwards."""
    seen = {}
    for mode in ("full", "lean"):
        run = subprocess.run(
            [sys.executable, "-c", _LEAN, mode], capture_output=True, text=True, encoding="utf-8", timeout=300
        )
        assert run.returncode == 0, run.stderr[-2000:]
        seen[mode] = run.stdout.split()
    assert seen == {"full": ["True", "True"], "lean": ["False", "False"]}


_EXIT = textwrap.dedent(
    """
    import atexit, sys
    atexit.register(lambda: print("teardown ran", flush=True))
    from organseg.cli import main
    if sys.argv[1] == "entry":
        sys.argv = ["organseg", *sys.argv[2:]]
        main()  # as the organseg script calls it
    else:
        main(sys.argv[2:])  # as a test or another program calls it
        print("main returned", flush=True)
    """
)


def _run_exit(mode: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-c", _EXIT, mode, *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        timeout=600,
    )


def test_infer_ends_without_teardown_after_writing(real_ct, tmp_path):
    """``organseg infer`` as the script runs it ends the process once all is written (no atexit handlers
    run), with its summary printed and exit status 0; a failing run exits through the normal error path."""
    out = tmp_path / "mask.nii.gz"
    run = _run_exit("entry", "infer", "--input", str(real_ct), "--output", str(out), "--backend", "torch")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "wrote" in run.stdout and "teardown ran" not in run.stdout
    assert io.read_image(out).shape == io.read_image(real_ct).shape
    bad = _run_exit("entry", "infer", "--input", str(tmp_path / "none.nii.gz"), "--output", str(out))
    assert bad.returncode != 0 and "none.nii.gz: no such file" in bad.stderr


def test_main_with_argv_returns_to_its_caller(real_ct, tmp_path):
    """``main([...])`` (how tests and other programs call it) segments and then returns: it must never end
    the caller's process (a test run would stop there, with exit status 0)."""
    out = tmp_path / "mask.nii.gz"
    run = _run_exit("argv", "infer", "--input", str(real_ct), "--output", str(out), "--backend", "torch")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "main returned" in run.stdout and "teardown ran" in run.stdout
    assert out.is_file()


_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    if sys.argv[1] == "keep":
        from organseg.cli import keep_freed_memory
        keep_freed_memory()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):  # a 100 MB temporary, allocated, touched and freed twenty times
        torch.ones(100 << 20, dtype=torch.uint8)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def test_cli_keeps_freed_memory_for_reuse():
    """After ``keep_freed_memory`` a repeated 100 MB temporary reuses its pages; with glibc's defaults
    every one is mapped afresh and faulted in 4 KB at a time (25 600 faults each, where glibc keeps them after a few rounds; torch's allocator asks
    for no huge pages). Checked against the default, so the test means something on this libc."""
    faults = {}
    for mode in ("default", "keep"):
        run = subprocess.run(
            [sys.executable, "-c", _FAULTS, mode],
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=120,
        )
        assert run.returncode == 0, run.stderr[-2000:]
        faults[mode] = int(run.stdout.split()[-1])
    assert faults["default"] > 400_000, faults  # fresh pages every time
    assert faults["keep"] < faults["default"] // 2, faults  # faulted in a few times, then reused
